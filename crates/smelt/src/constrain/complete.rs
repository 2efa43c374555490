//! A short text that finishes the document from any state the recogniser can be in: close
//! the open string or number, add the missing required properties and items with minimal
//! values, close the containers. It is both a witness that no accepted prefix is a dead end
//! (the tests finish every random walk with it) and a way to end a response cut off at the
//! token limit with valid JSON.

use super::machine::{Esc, Frame, Machine, Num, ObjSt, Thread, Utf8, UTF8_DONE};
use super::schema::{Node, NodeId, Object};

impl Machine<'_> {
    /// Bytes that take thread `t` to a complete document (not checked here: the caller
    /// feeds them through the recogniser).
    pub fn completion(&self, t: &Thread) -> Vec<u8> {
        let mut out = Vec::new();
        for f in t.iter().rev() {
            match *f {
                Frame::End { .. } => {}
                Frame::Val { node, depth, .. } => self.minimal(node, depth, &mut out),
                Frame::Num { st, .. } => {
                    if matches!(st, Num::Start | Num::Minus | Num::Dot | Num::ExpStart | Num::ExpSign) {
                        out.push(b'0');
                    }
                }
                Frame::Lit { node, lo, pos, .. } => {
                    let Node::Literal(lits) = &self.s.nodes[node as usize] else { unreachable!() };
                    out.extend_from_slice(&lits[lo as usize][pos as usize..]);
                }
                Frame::Str { node, mut len, esc, utf8 } => {
                    let Node::String { min, .. } = self.s.nodes[node as usize] else { unreachable!() };
                    match esc {
                        Esc::No => {}
                        Esc::Backslash => out.push(b'n'),
                        Esc::Hex { n, high, low, .. } => {
                            // Low half: "DC00"; otherwise zeros (a high half still needs its pair).
                            let digits: &[u8] = if low { b"DC00" } else { b"0000" };
                            out.extend_from_slice(&digits[n as usize..]);
                            if high {
                                out.extend_from_slice(b"\\uDC00");
                            }
                        }
                        Esc::PairBackslash => out.extend_from_slice(b"\\uDC00"),
                        Esc::PairU => out.extend_from_slice(b"uDC00"),
                    }
                    if utf8.need > 0 {
                        out.push(utf8.lo);
                        out.extend(std::iter::repeat_n(0x80, utf8.need as usize - 1));
                    }
                    while len < min {
                        out.push(b'a');
                        len += 1;
                    }
                    out.push(b'"');
                }
                Frame::Obj { node, depth, mut seen, st, .. } => {
                    let o = self.object(node);
                    let comma = !matches!(st, ObjSt::Start);
                    match st {
                        ObjSt::Start | ObjSt::AfterValue => {}
                        ObjSt::Comma => {
                            out.push(b'"');
                            self.property(o, depth, &mut seen, (0, o.names.len(), 0), UTF8_DONE, &mut out);
                        }
                        ObjSt::Key { lo, hi, pos, utf8, .. } => {
                            self.property(o, depth, &mut seen, (lo as usize, hi as usize, pos as usize), utf8, &mut out);
                        }
                        ObjSt::Colon { prop } => {
                            out.push(b':');
                            let child = if prop == u16::MAX { o.additional.expect("free key") } else { o.props[prop as usize] };
                            self.minimal(child, depth, &mut out);
                        }
                    }
                    let mut comma = comma;
                    for i in 0..o.names.len() {
                        if o.required[i] && seen & (1 << i) == 0 {
                            if comma {
                                out.push(b',');
                            }
                            comma = true;
                            out.push(b'"');
                            self.property(o, depth, &mut seen, (i, i + 1, 0), UTF8_DONE, &mut out);
                        }
                    }
                    out.push(b'}');
                }
                Frame::Arr { node, depth, mut count, started, .. } => {
                    let Node::Array { min, .. } = self.s.nodes[node as usize] else { unreachable!() };
                    let mut comma = started;
                    while count < min {
                        if comma {
                            out.push(b',');
                        }
                        comma = true;
                        self.minimal(self.s.item(node, count).expect("required items exist"), depth, &mut out);
                        count += 1;
                    }
                    out.push(b']');
                }
            }
        }
        out
    }

    /// Finish a key, then `:` and a minimal value. `(lo, hi, pos)`: the listed names that
    /// still match and how many bytes of the key are typed; `utf8`: a character in progress.
    fn property(&self, o: &Object, depth: u8, seen: &mut u128, (lo, hi, pos): (usize, usize, usize), utf8: Utf8, out: &mut Vec<u8>) {
        let ok = |i: usize| *seen & (1 << i) == 0 && self.fits(depth, o.props[i]);
        // Prefer a required name, then any listed one that is still allowed.
        let pick = (lo..hi).find(|&i| ok(i) && o.required[i]).or_else(|| (lo..hi).find(|&i| ok(i)));
        let child = match pick {
            Some(i) => {
                out.extend_from_slice(&o.names[i][pos..]);
                *seen |= 1 << i;
                o.props[i]
            }
            None => {
                // A free key (no listed name fits the typed prefix): finish its character,
                // and it must not end up spelling a listed name: add `_` until it does not.
                let (mut lo, mut hi, mut pos) = (lo, hi, pos);
                let tail = (0..utf8.need).map(|k| if k == 0 { utf8.lo } else { 0x80 });
                for b in tail.collect::<Vec<_>>() {
                    out.push(b);
                    (lo, hi) = narrow_names(&o.names, lo, hi, pos, b);
                    pos += 1;
                }
                while lo < hi && o.names[lo].len() == pos {
                    out.push(b'_');
                    (lo, hi) = narrow_names(&o.names, lo, hi, pos, b'_');
                    pos += 1;
                }
                o.additional.expect("a free key is allowed here")
            }
        };
        out.extend_from_slice(b"\":");
        self.minimal(child, depth, out);
    }

    /// The shortest instance of `node` at nesting `depth` (in compact JSON).
    fn minimal(&self, node: NodeId, depth: u8, out: &mut Vec<u8>) {
        let leaf = self.s.leaves[node as usize]
            .iter()
            .copied()
            .filter(|&l| self.fits(depth, l))
            .min_by_key(|&l| self.s.min_depth[l as usize])
            .expect("a value that fits exists");
        match &self.s.nodes[leaf as usize] {
            Node::Literal(lits) => out.extend_from_slice(&lits[0]),
            Node::Number { .. } => out.push(b'0'),
            Node::String { min, .. } => {
                out.push(b'"');
                out.extend(std::iter::repeat_n(b'a', *min as usize));
                out.push(b'"');
            }
            Node::Object(o) => {
                out.push(b'{');
                let mut first = true;
                for i in (0..o.names.len()).filter(|&i| o.required[i]) {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.push(b'"');
                    out.extend_from_slice(&o.names[i]);
                    out.extend_from_slice(b"\":");
                    self.minimal(o.props[i], depth + 1, out);
                }
                out.push(b'}');
            }
            Node::Array { min, .. } => {
                out.push(b'[');
                for i in 0..*min {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.minimal(self.s.item(leaf, i).expect("required items exist"), depth + 1, out);
                }
                out.push(b']');
            }
            Node::AnyOf(_) => unreachable!("leaves are never AnyOf"),
        }
    }
}

fn narrow_names(names: &[Vec<u8>], lo: usize, hi: usize, pos: usize, b: u8) -> (usize, usize) {
    let (l, h) = super::machine::narrow(names, lo as u32, hi as u32, pos, b);
    (l as usize, h as usize)
}
