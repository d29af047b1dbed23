//! Streaming chunking against one-shot chunking, on fuzzer-chosen parameters and reads.
//!
//! Contracts checked: the streaming chunker finds exactly `cut_points` on the same bytes, however
//! the reader splits them; the chunks concatenate back to the input; every chunk but the last is
//! within [min, max] and the last within (0, max]. Dedup depends on the first: a put that read
//! its input in different pieces would otherwise store different chunks for the same bytes.
//!
//! Input layout: 4 bytes of parameters, 1 byte of repeat count, 8 bytes of read sizes, then data.

#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use tessera::ChunkParams;

const PREFIX: usize = 13;

/// Hands out the data in pieces whose sizes cycle through `steps`.
struct Dribble<'a> {
    data: &'a [u8],
    steps: [usize; 8],
    i: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let step = self.steps[self.i % self.steps.len()];
        self.i += 1;
        let n = step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn even(v: u32) -> u32 {
    v & !1
}

fuzz_target!(|input: &[u8]| {
    if input.len() < PREFIX {
        return;
    }
    let (head, body) = input.split_at(PREFIX);

    // Small parameters so that short inputs still make many chunks: min in 64..=1024, avg 2-8x
    // min, max 2-8x avg, each raised to FastCDC's floor and kept even.
    let min = even(64 + u16::from_le_bytes([head[0], head[1]]) as u32 % (1024 - 64 + 1));
    let avg = even((min * (2 + head[2] as u32 % 7)).max(256));
    let max = even((avg * (2 + head[3] as u32 % 7)).max(1024));
    let params = ChunkParams {
        min_size: min,
        avg_size: avg,
        max_size: max,
    };
    params.validate().expect("derived parameters are valid");

    // Repeating the body reaches max-size cuts in low-entropy data without huge inputs.
    let repeat = 1 + head[4] as usize % 16;
    let data = body.repeat(repeat);
    let mut steps = [0usize; 8];
    for (s, &b) in steps.iter_mut().zip(&head[5..13]) {
        // Mostly tiny reads, sometimes large ones; never 0, which a reader means as end of input.
        *s = if b & 0x80 != 0 {
            1 + (b as usize & 0x7f) * 97
        } else {
            1 + b as usize
        };
    }

    let expected = params.cut_points(&data);
    let reader = Dribble {
        data: &data,
        steps,
        i: 0,
    };
    let mut streamed = Vec::with_capacity(expected.len());
    let mut joined = Vec::with_capacity(data.len());
    for chunk in params.chunker(reader) {
        let chunk = chunk.expect("an in-memory reader does not fail");
        assert_eq!(
            chunk.offset as usize,
            joined.len(),
            "chunk offset is not the running total"
        );
        streamed.push((chunk.offset as usize, chunk.data.len()));
        joined.extend_from_slice(&chunk.data);
    }
    assert_eq!(
        streamed, expected,
        "streaming and one-shot cut points differ ({params:?})"
    );
    assert!(joined == data, "chunks do not concatenate to the input");

    let (min, max) = (min as usize, max as usize);
    for (i, &(_, len)) in expected.iter().enumerate() {
        assert!(
            len > 0 && len <= max,
            "chunk {i} of {len} bytes outside (0, {max}]"
        );
        if i + 1 < expected.len() {
            assert!(
                len >= min,
                "chunk {i} of {len} bytes below min {min} and not last"
            );
        }
    }
});
