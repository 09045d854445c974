//! Keys, values and request bodies of the workloads, and the small seeded PRNG that picks
//! keys and operations (pure code, unit-tested).

use bytes::Bytes;

/// SplitMix64: fast, seedable, good enough to pick keys and operations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Names the keys of the key space: `/v2/keys/<prefix>/<index zero-padded to key-size>`.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
    key_size: usize,
    size: u64,
}

impl KeySpace {
    pub fn new(prefix: &str, key_size: usize, size: u64) -> Self {
        KeySpace {
            prefix: prefix.to_string(),
            key_size,
            size,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The key name of index `i` (exactly key-size bytes while the index fits).
    pub fn name(&self, i: u64) -> String {
        format!("{:0width$}", i, width = self.key_size)
    }

    /// The request path of index `i`.
    pub fn path(&self, i: u64) -> String {
        format!("/v2/keys/{}/{}", self.prefix, self.name(i))
    }

    /// The path for the `seq`-th request: in order if `sequential`, else at random.
    pub fn pick(&self, seq: u64, sequential: bool, rng: &mut Rng) -> String {
        let i = if sequential {
            seq % self.size
        } else {
            rng.below(self.size)
        };
        self.path(i)
    }
}

/// A value of exactly `len` URL-safe bytes.
pub fn value(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|i| ALPHABET[i % ALPHABET.len()] as char)
        .collect()
}

/// The form body `value=<len bytes>` of a PUT.
pub fn put_body(len: usize) -> Bytes {
    Bytes::from(format!("value={}", value(len)))
}

/// A PUT body like [`put_body`] with `len` random URL-safe bytes.
pub fn random_put_body(len: usize, rng: &mut Rng) -> Bytes {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut body = Vec::with_capacity("value=".len() + len);
    body.extend_from_slice(b"value=");
    body.extend((0..len).map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize]));
    Bytes::from(body)
}

/// The `?quorum=true` suffix of a read, if asked for.
pub fn get_query(quorum: bool) -> &'static str {
    if quorum {
        "?quorum=true"
    } else {
        ""
    }
}

/// The query of a TTL heartbeat.
pub fn ttl_refresh_query(ttl: u64) -> String {
    format!("?ttl={ttl}&refresh=true&prevExist=true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_put_bodies_differ_and_keep_their_length_and_alphabet() {
        let mut rng = Rng::new(7);
        let a = random_put_body(64, &mut rng);
        let b = random_put_body(64, &mut rng);
        assert_ne!(a, b);
        for body in [&a, &b] {
            let value = body.strip_prefix(b"value=").expect("a form body");
            assert_eq!(value.len(), 64);
            assert!(value.iter().all(u8::is_ascii_alphanumeric));
        }
    }

    #[test]
    fn key_names_are_key_size_bytes() {
        let ks = KeySpace::new("bench", 8, 100);
        assert_eq!(ks.name(42), "00000042");
        assert_eq!(ks.path(7), "/v2/keys/bench/00000007");
        assert_eq!(KeySpace::new("a/b", 3, 5).path(4), "/v2/keys/a/b/004");
    }

    #[test]
    fn sequential_keys_wrap_around_the_space() {
        let ks = KeySpace::new("p", 2, 3);
        let mut rng = Rng::new(1);
        let picked: Vec<_> = (0..5).map(|s| ks.pick(s, true, &mut rng)).collect();
        assert_eq!(
            picked,
            [
                "/v2/keys/p/00",
                "/v2/keys/p/01",
                "/v2/keys/p/02",
                "/v2/keys/p/00",
                "/v2/keys/p/01"
            ]
        );
    }

    #[test]
    fn random_keys_stay_in_the_space_and_cover_it() {
        let ks = KeySpace::new("p", 4, 10);
        let mut rng = Rng::new(7);
        let mut seen = [0u32; 10];
        for s in 0..10_000 {
            let path = ks.pick(s, false, &mut rng);
            let i: usize = path.rsplit('/').next().unwrap().parse().unwrap();
            seen[i] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn rng_unit_interval_and_determinism() {
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        for _ in 0..1000 {
            let x = a.unit();
            assert!((0.0..1.0).contains(&x));
            assert_eq!(x, b.unit());
        }
        assert_eq!(Rng::new(0).below(1), 0);
    }

    #[test]
    fn bodies_and_queries() {
        assert_eq!(value(40).len(), 40);
        assert_eq!(&put_body(3)[..], b"value=abc");
        assert_eq!(&put_body(0)[..], b"value=");
        assert_eq!(get_query(true), "?quorum=true");
        assert_eq!(get_query(false), "");
        assert_eq!(ttl_refresh_query(10), "?ttl=10&refresh=true&prevExist=true");
    }
}
