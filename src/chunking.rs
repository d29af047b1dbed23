//! Content-defined chunking: FastCDC (2020 variant) parameters and the streaming chunker.
//!
//! Pure code, no I/O of its own: the chunker pulls from any `Read`. The parameters are fixed per
//! store at creation — cut points depend on them, so changing them later would stop new data from
//! deduplicating against old data.

use std::io::Read;

use fastcdc::v2020::{self, Normalization};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// FastCDC size parameters, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkParams {
    /// 16 KiB / 64 KiB / 256 KiB.
    fn default() -> Self {
        ChunkParams {
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
        }
    }
}

/// The normalisation level is part of the cut-point function, so it is pinned here rather than
/// left to the library's default.
const NORMALIZATION: Normalization = Normalization::Level1;

impl ChunkParams {
    /// Checks the parameters against FastCDC's limits.
    pub fn validate(&self) -> Result<()> {
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let in_range = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max);
        let even = min % 2 == 0 && avg % 2 == 0 && max % 2 == 0;
        if !(in_range && even && min <= avg && avg <= max) {
            return Err(Error::InvalidInput(format!(
                "chunk sizes {min}/{avg}/{max} must be even, ordered min <= avg <= max, and within \
                 FastCDC's limits (min {}..={}, avg {}..={}, max {}..={})",
                v2020::MINIMUM_MIN,
                v2020::MINIMUM_MAX,
                v2020::AVERAGE_MIN,
                v2020::AVERAGE_MAX,
                v2020::MAXIMUM_MIN,
                v2020::MAXIMUM_MAX
            )));
        }
        Ok(())
    }

    /// Splits an in-memory buffer, returning `(offset, length)` of each chunk.
    ///
    /// Gives exactly the cut points [`Chunker`] finds on the same bytes; tests hold the two to
    /// that.
    pub fn cut_points(&self, data: &[u8]) -> Vec<(usize, usize)> {
        v2020::FastCDC::with_level(
            data,
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
            NORMALIZATION,
        )
        .map(|c| (c.offset, c.length))
        .collect()
    }

    /// A streaming chunker over `source`. Memory is bounded by `max_size` plus one chunk.
    pub fn chunker<R: Read>(&self, source: R) -> Chunker<R> {
        Chunker {
            inner: v2020::StreamCDC::with_level(
                source,
                self.min_size as usize,
                self.avg_size as usize,
                self.max_size as usize,
                NORMALIZATION,
            ),
        }
    }
}

/// A chunk produced by the streaming chunker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the chunk's first byte in the stream.
    pub offset: u64,
    /// The chunk's plain bytes.
    pub data: Vec<u8>,
}

/// Streaming FastCDC over a reader; yields chunks in order, then `None` at end of stream.
pub struct Chunker<R: Read> {
    inner: v2020::StreamCDC<R>,
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| match r {
            Ok(c) => Ok(Chunk {
                offset: c.offset,
                data: c.data,
            }),
            Err(v2020::Error::IoError(e)) => Err(e),
            Err(e) => Err(std::io::Error::other(format!("chunker: {e:?}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkParams {
        ChunkParams {
            min_size: 256,
            avg_size: 1024,
            max_size: 4096,
        }
    }

    /// Reads in small, irregular pieces so the chunker's buffer refills at odd boundaries.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.step = self.step % 997 + 13;
            Ok(n)
        }
    }

    fn data_strategy() -> impl Strategy<Value = Vec<u8>> {
        // Mix random bytes with repetitive runs: low-entropy data exercises the max-size cut.
        prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..3000),
                (any::<u8>(), 0usize..9000).prop_map(|(b, n)| vec![b; n]),
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn streaming_equals_one_shot(data in data_strategy(), step in 1usize..5000) {
            let p = small();
            let streamed: Vec<(usize, usize)> = p
                .chunker(Dribble { data: &data, step })
                .map(|c| { let c = c.unwrap(); (c.offset as usize, c.data.len()) })
                .collect();
            prop_assert_eq!(streamed, p.cut_points(&data));
        }

        #[test]
        fn chunks_concatenate_to_input_and_respect_bounds(data in data_strategy()) {
            let p = small();
            let chunks: Vec<Chunk> = p.chunker(&data[..]).map(|c| c.unwrap()).collect();
            let n = chunks.len();
            let mut joined = Vec::with_capacity(data.len());
            for (i, c) in chunks.iter().enumerate() {
                prop_assert_eq!(c.offset as usize, joined.len());
                prop_assert!(c.data.len() <= p.max_size as usize);
                // Only the final chunk may be shorter than the minimum.
                if i + 1 < n {
                    prop_assert!(c.data.len() >= p.min_size as usize);
                }
                joined.extend_from_slice(&c.data);
            }
            prop_assert_eq!(joined, data);
        }
    }

    #[test]
    fn default_parameters_are_valid_and_odd_ones_are_refused() {
        ChunkParams::default().validate().unwrap();
        let bad = ChunkParams {
            min_size: 300,
            avg_size: 200,
            max_size: 4096,
        };
        assert!(bad.validate().is_err());
        let odd = ChunkParams {
            min_size: 257,
            avg_size: 1024,
            max_size: 4096,
        };
        assert!(odd.validate().is_err());
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert_eq!(small().chunker(&[][..]).count(), 0);
        assert!(small().cut_points(&[]).is_empty());
    }
}
