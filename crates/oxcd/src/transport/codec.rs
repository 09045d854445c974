//! Wire encoding of raft message batches between members.
//!
//! A batch is a sequence of frames `[length u32 big-endian][raft Message, protobuf]`; a
//! message stream (`/raft/stream`) carries the same frames back to back. The decoder checks
//! every length against what is left, so a truncated or garbled body is an error, never a
//! panic or a partial batch.

// raft-rs's protobuf messages carry private bookkeeping fields, so tests build them field
// by field after `default()`.
#![allow(clippy::field_reassign_with_default)]

use bytes::BytesMut;
use protobuf::Message as _;
use raft::prelude::Message;

/// Largest single message accepted (a snapshot travels alone and may be big).
pub const MAX_FRAME: usize = u32::MAX as usize;

/// A body that is not a valid batch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The body ends inside a frame.
    #[error("truncated frame at byte {0}")]
    Truncated(usize),
    /// A frame does not decode as a raft message.
    #[error("undecodable message at byte {0}")]
    BadMessage(usize),
    /// A frame is longer than the reader accepts.
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    /// A frame of length 0: every message a member sends names its sender and receiver, so
    /// its encoding is never empty (accepting them let 4 zero bytes stand for a message).
    #[error("empty frame at byte {0}")]
    Empty(usize),
    /// A batch holds more messages than any sender puts in one.
    #[error("more than {MAX_BATCH_MESSAGES} messages in one batch")]
    TooMany,
}

/// Most messages one `POST /raft` batch may hold (senders close a batch at 8 MiB; a message
/// is tens of bytes at least).
pub const MAX_BATCH_MESSAGES: usize = 100_000;

/// Appends one message as a frame to `out`.
pub fn encode_into(msg: &Message, out: &mut Vec<u8>) {
    // Encoded in place after a length placeholder: no temporary buffer, no second copy.
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    msg.write_to_vec(out)
        .expect("encoding a raft message to memory cannot fail");
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Encodes a batch.
pub fn encode(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        encode_into(m, &mut out);
    }
    out
}

/// The length of the whole frame at the start of `buf`, or `None` while it is incomplete.
/// `max` bounds the frame length a reader is willing to buffer.
fn whole_frame(buf: &[u8], max: usize) -> Result<Option<usize>, CodecError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max {
        return Err(CodecError::TooLarge(len));
    }
    if len == 0 {
        return Err(CodecError::Empty(0));
    }
    Ok((buf.len() - 4 >= len).then_some(4 + len))
}

/// Decodes the frame at the start of `buf`: the message and the frame's length, or `None`
/// while the frame is incomplete (a stream reader waits for more bytes).
pub fn decode_frame(buf: &[u8], max: usize) -> Result<Option<(Message, usize)>, CodecError> {
    let Some(used) = whole_frame(buf, max)? else {
        return Ok(None);
    };
    let msg = Message::parse_from_bytes(&buf[4..used]).map_err(|_| CodecError::BadMessage(0))?;
    Ok(Some((msg, used)))
}

/// Takes the frame at the start of `buf` off it and decodes it, or `None` while the frame is
/// incomplete. The message's payloads (entry data) share the frame's memory instead of
/// being copied out of it.
pub fn take_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Message>, CodecError> {
    let Some(used) = whole_frame(buf, max)? else {
        return Ok(None);
    };
    let frame = buf.split_to(used).freeze().slice(4..);
    Message::parse_from_carllerche_bytes(&frame)
        .map(Some)
        .map_err(|_| CodecError::BadMessage(0))
}

/// Decodes a batch.
pub fn decode(mut body: &[u8]) -> Result<Vec<Message>, CodecError> {
    let total = body.len();
    let mut out = Vec::new();
    while !body.is_empty() {
        let at = total - body.len();
        match decode_frame(body, MAX_FRAME) {
            Ok(Some((msg, used))) => {
                if out.len() == MAX_BATCH_MESSAGES {
                    return Err(CodecError::TooMany);
                }
                out.push(msg);
                body = &body[used..];
            }
            Ok(None) => return Err(CodecError::Truncated(at)),
            Err(CodecError::BadMessage(_)) => return Err(CodecError::BadMessage(at)),
            Err(CodecError::Empty(_)) => return Err(CodecError::Empty(at)),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn zero_bytes_are_refused_not_taken_for_messages() {
        assert_eq!(decode(&[0; 64]), Err(CodecError::Empty(0)));
        let mut buf = bytes::BytesMut::from(&[0u8; 8][..]);
        assert_eq!(take_frame(&mut buf, MAX_FRAME), Err(CodecError::Empty(0)));
        let mut body = encode(&[msg(1, 0)]);
        body.extend_from_slice(&[0; 4]);
        let at = body.len() - 4;
        assert_eq!(decode(&body), Err(CodecError::Empty(at)));
    }

    #[test]
    fn a_batch_is_bounded_in_messages() {
        let one = encode(&[msg(1, 0)]);
        let body: Vec<u8> = one.repeat(MAX_BATCH_MESSAGES + 1);
        assert_eq!(decode(&body), Err(CodecError::TooMany));
        assert_eq!(decode(&one.repeat(3)).map(|v| v.len()), Ok(3));
    }

    use super::*;
    use raft::prelude::{Entry, MessageType};

    fn msg(to: u64, entries: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = to;
        m.from = 7;
        m.term = 3;
        m.entries = (0..entries)
            .map(|i| {
                let mut e = Entry::default();
                e.index = i as u64 + 1;
                e.data = vec![i as u8; 10].into();
                e
            })
            .collect::<Vec<_>>()
            .into();
        m
    }

    #[test]
    fn batches_round_trip() {
        let batch = vec![msg(1, 0), msg(2, 3), msg(3, 100)];
        let body = encode(&batch);
        assert_eq!(decode(&body).unwrap(), batch);
        assert_eq!(decode(&[]).unwrap(), vec![]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let body = encode(&[msg(1, 2), msg(2, 1)]);
        let first_len = 4 + u32::from_be_bytes(body[0..4].try_into().unwrap()) as usize;
        for cut in 1..body.len() {
            let r = decode(&body[..cut]);
            if cut == first_len {
                assert_eq!(r.unwrap().len(), 1, "a whole first frame decodes");
            } else {
                assert!(r.is_err(), "cut at {cut} must fail");
            }
        }
    }

    #[test]
    fn frames_decode_one_at_a_time_as_bytes_arrive() {
        let batch = vec![msg(1, 2), msg(2, 0)];
        let body = encode(&batch);
        let first_len = 4 + u32::from_be_bytes(body[0..4].try_into().unwrap()) as usize;
        for cut in 0..first_len {
            assert_eq!(decode_frame(&body[..cut], MAX_FRAME).unwrap(), None);
        }
        let (m, used) = decode_frame(&body, MAX_FRAME).unwrap().unwrap();
        assert_eq!((m, used), (batch[0].clone(), first_len));
        let (m, used) = decode_frame(&body[first_len..], MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!((m, first_len + used), (batch[1].clone(), body.len()));
        assert_eq!(
            decode_frame(&body, 3),
            Err(CodecError::TooLarge(first_len - 4))
        );
    }

    #[test]
    fn frames_are_taken_off_a_stream_buffer_as_they_complete() {
        let batch = vec![msg(1, 3), msg(2, 0)];
        let body = encode(&batch);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        // Bytes arrive one at a time; every whole frame is taken as soon as it is in.
        for b in &body {
            buf.extend_from_slice(&[*b]);
            while let Some(m) = take_frame(&mut buf, MAX_FRAME).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, batch);
        assert!(buf.is_empty());
        let first = u32::from_be_bytes(body[0..4].try_into().unwrap()) as usize;
        let mut big = BytesMut::from(&body[..]);
        assert_eq!(take_frame(&mut big, 3), Err(CodecError::TooLarge(first)));
        let mut garbage = BytesMut::from(&[0u8, 0, 0, 2, 0xff, 0xff][..]);
        assert!(take_frame(&mut garbage, MAX_FRAME).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut body = vec![0, 0, 0, 5];
        body.extend_from_slice(&[0xff; 5]);
        assert!(decode(&body).is_err());
        assert!(decode(&[0xff, 0xff, 0xff, 0xff, 1]).is_err());
    }
}
