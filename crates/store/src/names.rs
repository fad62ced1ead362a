//! File names for subjects, groups and consumers: any byte outside `[A-Za-z0-9._-]` is written
//! as `%XX`, so names with `/`, `%` or unicode are safe and distinct on every file system.

/// The file-name form of `name`.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.starts_with('.') {
        // "." and ".." are not names.
        out.replace_range(0..1, "%2E");
    }
    out
}

/// The name a file-name form stands for.
pub fn decode(file: &str) -> Option<String> {
    let bytes = file.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = file.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_path_safe() {
        for name in [
            "order.paid",
            "%RETRY%a%b",
            "a/b",
            "..",
            ".hidden",
            "主题",
            "",
        ] {
            let f = encode(name);
            assert!(!f.contains('/') && f != "." && f != "..", "{f}");
            assert_eq!(decode(&f).as_deref(), Some(name));
        }
    }
}
