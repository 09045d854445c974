//! Record payloads: plain structs and their byte encodings.

/// A raft log entry as the WAL stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub entry_type: i32,
    pub data: Vec<u8>,
    pub context: Vec<u8>,
}

/// Raft's durable vote state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// Marks that a snapshot at (index, term) was taken: replay starts there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotMarker {
    pub index: u64,
    pub term: u64,
}

pub const METADATA: u8 = 1;
pub const ENTRY: u8 = 2;
pub const STATE: u8 = 3;
pub const CRC: u8 = 4;
pub const SNAPSHOT: u8 = 5;

/// Reads little-endian fields from a payload, failing on short input.
pub struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    pub fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_le_bytes(head.try_into().ok()?))
    }
    pub fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_at_checked(4)?;
        self.0 = rest;
        Some(u32::from_le_bytes(head.try_into().ok()?))
    }
    pub fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = self.u32()? as usize;
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(head.to_vec())
    }
}

/// An entry to write, borrowing its payload (the caller's copy is written from directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub term: u64,
    pub index: u64,
    pub entry_type: i32,
    pub data: &'a [u8],
    pub context: &'a [u8],
}

impl EntryRef<'_> {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.term.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&(self.entry_type as u32).to_le_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        out.extend_from_slice(self.data);
        out.extend_from_slice(&(self.context.len() as u32).to_le_bytes());
        out.extend_from_slice(self.context);
    }
}

impl Entry {
    /// The entry as an [`EntryRef`].
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            term: self.term,
            index: self.index,
            entry_type: self.entry_type,
            data: &self.data,
            context: &self.context,
        }
    }
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.as_ref().encode_into(out);
    }
    pub fn decode(b: &[u8]) -> Option<Entry> {
        let mut r = Reader(b);
        let e = Entry {
            term: r.u64()?,
            index: r.u64()?,
            entry_type: r.u32()? as i32,
            data: r.bytes()?,
            context: r.bytes()?,
        };
        r.0.is_empty().then_some(e)
    }
}

impl HardState {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        for v in [self.term, self.vote, self.commit] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    pub fn decode(b: &[u8]) -> Option<HardState> {
        let mut r = Reader(b);
        let hs = HardState {
            term: r.u64()?,
            vote: r.u64()?,
            commit: r.u64()?,
        };
        r.0.is_empty().then_some(hs)
    }
}

impl SnapshotMarker {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.term.to_le_bytes());
    }
    pub fn decode(b: &[u8]) -> Option<SnapshotMarker> {
        let mut r = Reader(b);
        let m = SnapshotMarker {
            index: r.u64()?,
            term: r.u64()?,
        };
        r.0.is_empty().then_some(m)
    }
}
