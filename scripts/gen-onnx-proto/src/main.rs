fn main() {
    let args: Vec<String> = std::env::args().collect();
    protobuf_codegen::Codegen::new()
        .pure()
        .include(&args[1])
        .input(format!("{}/onnx.proto", args[1]))
        .out_dir(&args[2])
        .customize(protobuf_codegen::Customize::default().gen_mod_rs(false).lite_runtime(true))
        .run_from_script();
}
