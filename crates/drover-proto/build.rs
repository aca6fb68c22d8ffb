fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!: cargo reuses a build script across checkouts of the same
    // workspace (a CI clone, a worktree), and a baked-in path would compile another checkout's .proto.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let proto_dir = format!("{manifest_dir}/../../proto");
    let file = format!("{proto_dir}/drover.proto");
    // Relative to this package, so the check follows the checkout being built.
    println!("cargo:rerun-if-changed=../../proto/drover.proto");
    let fds = protox::compile([file.as_str()], [proto_dir.as_str()])?;
    // Small per-call buffers: see src/codec.rs.
    tonic_prost_build::configure()
        .codec_path("crate::codec::DroverCodec")
        .compile_fds(fds)?;
    Ok(())
}
