//! Compiles the protocol files with a vendored `protoc`, so a fresh checkout builds without a
//! system protobuf compiler. The files live at the top of the repository (`proto/`), shared with
//! the SDKs of other languages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=../../proto");
    tonic_prost_build::configure().compile_protos(
        &[
            "../../proto/baton/v1/participant.proto",
            "../../proto/baton/v1/coordinator.proto",
        ],
        &["../../proto"],
    )?;
    Ok(())
}
