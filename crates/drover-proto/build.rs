fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protox compiles the .proto in pure Rust, so no `protoc` is needed on build machines.
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let file = format!("{proto_dir}/drover.proto");
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file.as_str()], [proto_dir])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
