//! GPT-2's byte-level alphabet: every byte is shown as a printable Unicode character so that
//! byte-level BPE vocabularies can be stored as text (space is "Ġ", newline "Ċ", ...).

use std::sync::OnceLock;

struct Tables {
    /// byte → char
    enc: [char; 256],
    /// char (as u32, all < 324) → byte + 1 (0 = not in the alphabet)
    dec: [u16; 324],
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut enc = ['\0'; 256];
        let mut dec = [0u16; 324];
        let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let mut n = 0;
        for b in 0..256u32 {
            let c = if printable(b) {
                b
            } else {
                n += 1;
                255 + n
            };
            enc[b as usize] = char::from_u32(c).expect("valid");
            dec[c as usize] = b as u16 + 1;
        }
        Tables { enc, dec }
    })
}

/// Append the byte-level encoding of `bytes` to `out`.
pub fn encode_into(bytes: &[u8], out: &mut String) {
    let t = tables();
    for &b in bytes {
        out.push(t.enc[b as usize]);
    }
}

/// The byte a byte-level character stands for.
pub fn decode_char(c: char) -> Option<u8> {
    let t = tables();
    match t.dec.get(c as usize) {
        Some(&v) if v > 0 => Some((v - 1) as u8),
        _ => None,
    }
}

/// Map a byte-level token text back to bytes. Characters outside the alphabet (which a
/// well-formed vocabulary never has) are kept as their UTF-8.
pub fn decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match decode_char(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut s = String::new();
        encode_into(&all, &mut s);
        assert_eq!(s.chars().count(), 256);
        assert_eq!(decode(&s), all);
        let mut sp = String::new();
        encode_into(b" \n", &mut sp);
        assert_eq!(sp, "\u{120}\u{10a}"); // "Ġ", "Ċ"
    }
}
