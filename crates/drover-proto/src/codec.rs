//! The codec of every drover gRPC call: prost, with a small first buffer per call.
//!
//! tonic's default allocates 8 KiB for decoding and 8 KiB for encoding on every call, up front. An
//! agent's `Attach` stream lives as long as the agent is connected and carries mostly messages of a few
//! hundred bytes, so at fleet size those two buffers were a fifth of the server's memory per idle node.
//! The buffers still grow to the largest message that passes (task output, blobs): only the start is small.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes a call's encode and decode buffers start with.
pub const CALL_BUFFER: usize = 1024;
/// Encoded bytes gathered before they are handed to HTTP/2 (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct DroverCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for DroverCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn buffers() -> BufferSettings {
    BufferSettings::new(CALL_BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for DroverCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffers())
    }
}
