//! A minimal gzip decoder (RFC 1951/1952), to check what the client of a compressed stream
//! gets.

/// Decodes a single-member gzip file, checking its CRC-32 and length.
pub(crate) fn decode(data: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() < 18 || data[0..3] != [0x1f, 0x8b, 8] {
        return Err("not a gzip header".into());
    }
    let flags = data[3];
    let mut pos = 10;
    if flags & 4 != 0 {
        let xlen = usize::from(u16::from_le_bytes([data[pos], data[pos + 1]]));
        pos += 2 + xlen;
    }
    for flag in [8, 16] {
        if flags & flag != 0 {
            pos += data[pos..].iter().position(|&b| b == 0).ok_or("name")? + 1;
        }
    }
    if flags & 2 != 0 {
        pos += 2;
    }
    let mut bits = Bits {
        data,
        pos,
        buf: 0,
        count: 0,
    };
    let out = inflate(&mut bits)?;
    let trailer = &data[bits.pos..];
    if trailer.len() != 8 {
        return Err(format!("{} bytes after the deflate stream", trailer.len()));
    }
    let crc = u32::from_le_bytes(trailer[0..4].try_into().unwrap());
    let len = u32::from_le_bytes(trailer[4..8].try_into().unwrap());
    if crc != crc32(&out) || len != out.len() as u32 {
        return Err("bad crc or length".into());
    }
    Ok(out)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u32,
    count: u32,
}

impl Bits<'_> {
    fn get(&mut self, n: u32) -> Result<u32, String> {
        while self.count < n {
            let byte = *self.data.get(self.pos).ok_or("truncated")?;
            self.pos += 1;
            self.buf |= u32::from(byte) << self.count;
            self.count += 8;
        }
        let v = self.buf & ((1u32 << n) - 1);
        self.buf >>= n;
        self.count -= n;
        Ok(v)
    }

    fn align(&mut self) {
        self.buf = 0;
        self.count = 0;
    }
}

struct Huffman {
    counts: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Self {
        let mut counts = [0u16; 16];
        for &l in lengths {
            counts[usize::from(l)] += 1;
        }
        counts[0] = 0;
        let mut offsets = [0u16; 16];
        for len in 1..15 {
            offsets[len + 1] = offsets[len] + counts[len];
        }
        let mut symbols = vec![0; lengths.len()];
        for (symbol, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbols[usize::from(offsets[usize::from(l)])] = symbol as u16;
                offsets[usize::from(l)] += 1;
            }
        }
        Self { counts, symbols }
    }

    fn decode(&self, bits: &mut Bits<'_>) -> Result<u16, String> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= bits.get(1)? as i32;
            let count = i32::from(self.counts[len]);
            if code - count < first {
                return Ok(self.symbols[(index + (code - first)) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err("bad code".into())
    }
}

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

fn inflate(bits: &mut Bits<'_>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let last = bits.get(1)?;
        match bits.get(2)? {
            0 => {
                bits.align();
                let d = &bits.data[bits.pos..];
                if d.len() < 4 {
                    return Err("truncated stored block".into());
                }
                let len = usize::from(u16::from_le_bytes([d[0], d[1]]));
                let nlen = u16::from_le_bytes([d[2], d[3]]);
                if nlen != !(len as u16) || d.len() < 4 + len {
                    return Err("bad stored block".into());
                }
                out.extend_from_slice(&d[4..4 + len]);
                bits.pos += 4 + len;
            }
            1 => {
                let mut lengths = [0u8; 288];
                lengths[..144].fill(8);
                lengths[144..256].fill(9);
                lengths[256..280].fill(7);
                lengths[280..].fill(8);
                let lit = Huffman::new(&lengths);
                let dist = Huffman::new(&[5; 30]);
                codes(bits, &mut out, &lit, &dist)?;
            }
            2 => {
                let nlen = bits.get(5)? as usize + 257;
                let ndist = bits.get(5)? as usize + 1;
                let ncode = bits.get(4)? as usize + 4;
                const ORDER: [usize; 19] = [
                    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
                ];
                let mut code_lengths = [0u8; 19];
                for &i in &ORDER[..ncode] {
                    code_lengths[i] = bits.get(3)? as u8;
                }
                let code = Huffman::new(&code_lengths);
                let mut lengths = Vec::with_capacity(nlen + ndist);
                while lengths.len() < nlen + ndist {
                    let symbol = code.decode(bits)?;
                    let (value, repeat) = match symbol {
                        0..=15 => (symbol as u8, 1),
                        16 => (
                            *lengths.last().ok_or("repeat of nothing")?,
                            3 + bits.get(2)?,
                        ),
                        17 => (0, 3 + bits.get(3)?),
                        _ => (0, 11 + bits.get(7)?),
                    };
                    lengths.extend(std::iter::repeat_n(value, repeat as usize));
                }
                if lengths.len() != nlen + ndist {
                    return Err("too many lengths".into());
                }
                let lit = Huffman::new(&lengths[..nlen]);
                let dist = Huffman::new(&lengths[nlen..]);
                codes(bits, &mut out, &lit, &dist)?;
            }
            _ => return Err("bad block type".into()),
        }
        if last == 1 {
            // The trailer starts at the next byte boundary.
            bits.align();
            return Ok(out);
        }
    }
}

fn codes(
    bits: &mut Bits<'_>,
    out: &mut Vec<u8>,
    lit: &Huffman,
    dist: &Huffman,
) -> Result<(), String> {
    loop {
        let symbol = usize::from(lit.decode(bits)?);
        match symbol {
            0..=255 => out.push(symbol as u8),
            256 => return Ok(()),
            _ => {
                let i = symbol - 257;
                if i >= 29 {
                    return Err("bad length".into());
                }
                let len = usize::from(LEN_BASE[i]) + bits.get(u32::from(LEN_EXTRA[i]))? as usize;
                let d = usize::from(dist.decode(bits)?);
                if d >= 30 {
                    return Err("bad distance".into());
                }
                let back = usize::from(DIST_BASE[d]) + bits.get(u32::from(DIST_EXTRA[d]))? as usize;
                if back > out.len() {
                    return Err("distance too far".into());
                }
                for _ in 0..len {
                    out.push(out[out.len() - back]);
                }
            }
        }
    }
}
