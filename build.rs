//! Compiles the protocol files with a vendored `protoc`, so a fresh checkout builds without a
//! system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds the migrations; a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/baton/v1/participant.proto",
            "proto/baton/v1/coordinator.proto",
        ],
        &["proto"],
    )?;
    // The coordinator's server once more, alone (the messages are the ones above), with a codec
    // that answers a request that does not decode with INVALID_ARGUMENT (src/api/codec.rs).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("strict");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".baton.v1", "crate::proto")
        .codec_path("crate::api::codec::StrictCodec")
        .out_dir(&out)
        .compile_protos(&["proto/baton/v1/coordinator.proto"], &["proto"])?;
    Ok(())
}
