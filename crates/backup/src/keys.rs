//! Byte layouts of the index's keys: order-preserving where a range is scanned (times and
//! sequences big-endian, signed times with the sign bit flipped) and prefix-exact for names
//! (a `u16` length before the bytes, so one subject's keys never mix with another's).

/// Appends a name: `u16` length (big-endian) then the bytes. Names longer than 65 535 bytes
/// are cut at that length (the wire's own `str16` cannot carry more).
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends a signed time so that byte order is numeric order.
pub fn put_time(out: &mut Vec<u8>, t: i64) {
    out.extend_from_slice(&((t as u64) ^ (1 << 63)).to_be_bytes());
}

/// Appends an unsigned number (big-endian).
pub fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_be_bytes());
}

/// Reads what the `put_*` functions wrote, front to back; `None` on a short or bad key.
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    /// A reader of `key`.
    pub fn new(key: &'a [u8]) -> Self {
        Self { rest: key }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    /// A name.
    pub fn str(&mut self) -> Option<&'a str> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// A time.
    pub fn time(&mut self) -> Option<i64> {
        Some((u64::from_be_bytes(self.take(8)?.try_into().ok()?) ^ (1 << 63)) as i64)
    }

    /// An unsigned number.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// The smallest key greater than every key starting with `prefix` (for a range's end), or
/// `None` when there is none (all bytes 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_sort_numerically_and_read_back() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        let keys: Vec<Vec<u8>> = times
            .iter()
            .map(|t| {
                let mut k = Vec::new();
                put_time(&mut k, *t);
                k
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (k, t) in keys.iter().zip(times) {
            assert_eq!(KeyReader::new(k).time(), Some(t));
        }
    }

    #[test]
    fn a_subjects_prefix_never_covers_another_subject() {
        let mut a = Vec::new();
        put_str(&mut a, "ab");
        let mut b = Vec::new();
        put_str(&mut b, "abc");
        put_time(&mut b, 0);
        assert!(!b.starts_with(&a));
        let mut r = KeyReader::new(&b);
        assert_eq!(r.str(), Some("abc"));
        assert_eq!(r.time(), Some(0));
        assert!(r.is_empty());
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }
}
