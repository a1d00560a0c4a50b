//! Generates the coordinator's gRPC server once more, with a codec that answers a request that
//! does not decode with INVALID_ARGUMENT (src/api/codec.rs). The messages are `baton-tx-proto`'s.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=../../proto");
    // sqlx::migrate! embeds the migrations; a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=../../migrations");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("strict");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".baton.v1", "::baton_tx_proto")
        .codec_path("crate::api::grpc::codec::StrictCodec")
        .out_dir(&out)
        .compile_protos(
            &["../../proto/baton/v1/coordinator.proto"],
            &["../../proto"],
        )?;
    Ok(())
}
