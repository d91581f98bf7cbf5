//! Malformed and hostile models given to `adaptc rewrite`: each must fail with a clear error
//! naming what is wrong, exit with status 1 (never a panic's 101 or a signal), and leave no
//! output file behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use adaptc_ir::onnx::proto as pb;
use protobuf::{EnumOrUnknown, Message, MessageField};

fn tensor_f32(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    let mut t = pb::TensorProto::new();
    t.name = Some(name.into());
    t.dims = dims.to_vec();
    t.data_type = Some(1);
    t.raw_data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    t
}

fn value(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    let mut shape = pb::TensorShapeProto::new();
    for &d in dims {
        let mut dim = pb::tensor_shape_proto::Dimension::new();
        dim.set_dim_value(d);
        shape.dim.push(dim);
    }
    let mut tensor = pb::type_proto::Tensor::new();
    tensor.elem_type = Some(1);
    tensor.shape = MessageField::some(shape);
    let mut ty = pb::TypeProto::new();
    ty.value = Some(pb::type_proto::Value::TensorType(tensor));
    let mut v = pb::ValueInfoProto::new();
    v.name = Some(name.into());
    v.type_ = MessageField::some(ty);
    v
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], name: &str) -> pb::NodeProto {
    let mut n = pb::NodeProto::new();
    n.op_type = Some(op.into());
    n.name = Some(name.into());
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n
}

/// A valid model: y = x + w, x and w of shape [4].
fn base() -> pb::ModelProto {
    let mut g = pb::GraphProto::new();
    g.name = Some("g".into());
    g.input.push(value("x", &[4]));
    g.output.push(value("y", &[4]));
    g.initializer.push(tensor_f32("w", &[4], &[1.0, 2.0, 3.0, 4.0]));
    g.node.push(node("Add", &["x", "w"], &["y"], "add"));
    let mut m = pb::ModelProto::new();
    m.ir_version = Some(10);
    let mut opset = pb::OperatorSetIdProto::new();
    opset.version = Some(20);
    m.opset_import.push(opset);
    m.graph = MessageField::some(g);
    m
}

fn graph(m: &mut pb::ModelProto) -> &mut pb::GraphProto {
    m.graph.as_mut().expect("base model has a graph")
}

/// Makes `w` external with the given key/values (and no inline data).
fn external(m: &mut pb::ModelProto, entries: &[(&str, &str)]) {
    let w = &mut graph(m).initializer[0];
    w.raw_data = None;
    w.data_location = Some(EnumOrUnknown::from_i32(1));
    for (k, v) in entries {
        let mut e = pb::StringStringEntryProto::new();
        e.key = Some(k.to_string());
        e.value = Some(v.to_string());
        w.external_data.push(e);
    }
}

struct Case {
    dir: tempfile::TempDir,
    model: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("model");
        std::fs::create_dir(&model_dir).unwrap();
        std::fs::write(model_dir.join("w.bin"), [0u8; 16]).unwrap();
        std::fs::write(dir.path().join("secret.bin"), [7u8; 16]).unwrap();
        Case { model: model_dir.join("m.onnx"), dir }
    }

    fn with_proto(m: &pb::ModelProto) -> Case {
        let c = Case::new();
        std::fs::write(&c.model, m.write_to_bytes().unwrap()).unwrap();
        c
    }

    fn with_bytes(bytes: &[u8]) -> Case {
        let c = Case::new();
        std::fs::write(&c.model, bytes).unwrap();
        c
    }

    fn model_dir(&self) -> &Path {
        self.model.parent().unwrap()
    }

    /// Runs `adaptc rewrite` into a fresh output folder and checks the failure.
    fn expect_error(&self, expected: &str) {
        let out_dir = self.dir.path().join("out");
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join("out.onnx");
        self.expect_error_writing(&out, expected);
        let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "files left in the output folder: {left:?}");
    }

    fn expect_error_writing(&self, out: &Path, expected: &str) {
        let output = Command::new(env!("CARGO_BIN_EXE_adaptc"))
            .arg("rewrite")
            .arg(&self.model)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "expected exit 1 for `{expected}`, got {:?}: {stderr}",
            output.status
        );
        assert!(
            stderr.to_lowercase().contains(&expected.to_lowercase()),
            "expected `{expected}` in the error, got: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "partial output left at {}", out.display());
        assert!(!out.with_extension("onnx.data").exists());
    }
}

fn proto_case(edit: impl FnOnce(&mut pb::ModelProto)) -> Case {
    let mut m = base();
    edit(&mut m);
    Case::with_proto(&m)
}

#[test]
fn the_base_model_is_accepted() {
    let c = Case::with_proto(&base());
    let out = c.dir.path().join("ok.onnx");
    let status =
        Command::new(env!("CARGO_BIN_EXE_adaptc")).arg("rewrite").arg(&c.model).arg("-o").arg(&out).status().unwrap();
    assert!(status.success());
    assert!(out.exists());
}

// ----- files that are not models -------------------------------------------------------------

#[test]
fn empty_file() {
    Case::with_bytes(b"").expect_error("empty");
}

#[test]
fn garbage_bytes() {
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    Case::with_bytes(&bytes).expect_error("not a valid ONNX model");
}

#[test]
fn text_file() {
    Case::with_bytes(b"this is not an onnx model\n").expect_error("not a valid ONNX model");
}

#[test]
fn truncated_model() {
    let bytes = base().write_to_bytes().unwrap();
    Case::with_bytes(&bytes[..bytes.len() - 7]).expect_error("not a valid ONNX model");
}

#[test]
fn truncated_real_model() {
    let bert = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/bert6.onnx")).unwrap();
    Case::with_bytes(&bert[..bert.len() / 2]).expect_error("not a valid ONNX model");
}

#[test]
fn model_without_graph() {
    proto_case(|m| m.graph = MessageField::none()).expect_error("no graph");
}

#[test]
fn missing_input_file() {
    let c = Case::new();
    c.expect_error("m.onnx");
}

#[test]
fn input_is_a_folder() {
    let c = Case::new();
    std::fs::create_dir(&c.model).unwrap();
    c.expect_error("not a regular file");
}

#[test]
fn deeply_nested_subgraphs() {
    let mut inner = pb::GraphProto::new();
    for _ in 0..200 {
        let mut attr = pb::AttributeProto::new();
        attr.name = Some("then_branch".into());
        attr.type_ = Some(EnumOrUnknown::new(pb::attribute_proto::AttributeType::GRAPH));
        attr.g = MessageField::some(inner);
        let mut n = node("If", &["c"], &["o"], "if");
        n.attribute.push(attr);
        inner = pb::GraphProto::new();
        inner.node.push(n);
    }
    proto_case(|m| graph(m).node.push(inner.node.remove(0))).expect_error("recursion");
}

// ----- graph structure -------------------------------------------------------------------------

#[test]
fn cycle() {
    proto_case(|m| {
        let g = graph(m);
        g.node.clear();
        g.node.push(node("Add", &["x", "b"], &["a"], "first"));
        g.node.push(node("Relu", &["a"], &["b"], "second"));
        g.node.push(node("Identity", &["a"], &["y"], "out"));
    })
    .expect_error("cycle");
}

#[test]
fn self_loop() {
    proto_case(|m| {
        let g = graph(m);
        g.node.push(node("Relu", &["z"], &["z"], "selfish"));
    })
    .expect_error("cycle");
}

#[test]
fn dangling_input() {
    proto_case(|m| graph(m).node[0].input[1] = "nowhere".into()).expect_error("reads `nowhere`");
}

#[test]
fn undefined_graph_output() {
    proto_case(|m| graph(m).output.push(value("ghost", &[4]))).expect_error("graph output `ghost`");
}

#[test]
fn duplicate_producers() {
    proto_case(|m| graph(m).node.push(node("Relu", &["x"], &["y"], "again"))).expect_error("already produced");
}

#[test]
fn node_redefines_initializer() {
    proto_case(|m| graph(m).node.push(node("Relu", &["x"], &["w"], "clash"))).expect_error("redefines `w`");
}

#[test]
fn node_redefines_graph_input() {
    proto_case(|m| graph(m).node.push(node("Relu", &["w"], &["x"], "clash"))).expect_error("redefines `x`");
}

#[test]
fn duplicate_initializers() {
    proto_case(|m| {
        let w = graph(m).initializer[0].clone();
        graph(m).initializer.push(w);
    })
    .expect_error("defined twice");
}

#[test]
fn duplicate_graph_inputs() {
    proto_case(|m| graph(m).input.push(value("x", &[4]))).expect_error("declared twice");
}

#[test]
fn node_producing_a_value_twice() {
    proto_case(|m| graph(m).node.push(node("Split", &["x"], &["s", "s"], "split"))).expect_error("twice");
}

#[test]
fn negative_dim_in_value_info() {
    proto_case(|m| graph(m).value_info.push(value("y", &[-3]))).expect_error("negative dimension");
}

#[test]
fn dangling_input_in_subgraph() {
    proto_case(|m| {
        let mut body = pb::GraphProto::new();
        body.node.push(node("Relu", &["undefined_inner"], &["r"], "inner"));
        body.output.push(value("r", &[4]));
        let mut attr = pb::AttributeProto::new();
        attr.name = Some("then_branch".into());
        attr.type_ = Some(EnumOrUnknown::new(pb::attribute_proto::AttributeType::GRAPH));
        attr.g = MessageField::some(body.clone());
        let mut else_attr = attr.clone();
        else_attr.name = Some("else_branch".into());
        let mut n = node("If", &["x"], &["z"], "branch");
        n.attribute.push(attr);
        n.attribute.push(else_attr);
        graph(m).node.push(n);
    })
    .expect_error("undefined_inner");
}

#[test]
fn unknown_attribute_type() {
    proto_case(|m| {
        let mut a = pb::AttributeProto::new();
        a.name = Some("weird".into());
        a.type_ = Some(EnumOrUnknown::from_i32(77));
        graph(m).node[0].attribute.push(a);
    })
    .expect_error("unknown type code 77");
}

#[test]
fn duplicate_attribute() {
    proto_case(|m| {
        let mut a = pb::AttributeProto::new();
        a.name = Some("axis".into());
        a.type_ = Some(EnumOrUnknown::new(pb::attribute_proto::AttributeType::INT));
        graph(m).node[0].attribute.push(a.clone());
        graph(m).node[0].attribute.push(a);
    })
    .expect_error("attribute `axis` twice");
}

// ----- tensor data -----------------------------------------------------------------------------

#[test]
fn negative_dim_in_initializer() {
    proto_case(|m| graph(m).initializer[0].dims = vec![-4]).expect_error("negative dimension");
}

#[test]
fn overflowing_dims() {
    proto_case(|m| graph(m).initializer[0].dims = vec![1 << 40, 1 << 40, 1 << 40]).expect_error("64 bits");
}

#[test]
fn huge_dims_with_little_data() {
    proto_case(|m| graph(m).initializer[0].dims = vec![1 << 40]).expect_error("need 4398046511104");
}

#[test]
fn raw_data_too_short() {
    proto_case(|m| {
        graph(m).initializer[0].raw_data.as_mut().unwrap().pop();
    })
    .expect_error("raw_data has 15 bytes");
}

#[test]
fn raw_data_too_long() {
    proto_case(|m| graph(m).initializer[0].raw_data.as_mut().unwrap().extend([0, 0, 0, 0]))
        .expect_error("raw_data has 20 bytes");
}

#[test]
fn typed_data_count_mismatch() {
    proto_case(|m| {
        let w = &mut graph(m).initializer[0];
        w.raw_data = None;
        w.float_data = vec![1.0, 2.0, 3.0];
    })
    .expect_error("3 typed values");
}

#[test]
fn typed_data_in_the_wrong_field() {
    proto_case(|m| {
        let w = &mut graph(m).initializer[0];
        w.raw_data = None;
        w.int64_data = vec![1, 2, 3, 4];
    })
    .expect_error("does not match the type");
}

#[test]
fn both_raw_and_typed_data() {
    proto_case(|m| graph(m).initializer[0].float_data = vec![1.0; 4]).expect_error("both raw_data and typed");
}

#[test]
fn missing_data() {
    proto_case(|m| graph(m).initializer[0].raw_data = None).expect_error("no data");
}

#[test]
fn unknown_dtype() {
    proto_case(|m| graph(m).initializer[0].data_type = Some(99)).expect_error("unknown data type code 99");
}

#[test]
fn undefined_dtype() {
    proto_case(|m| graph(m).initializer[0].data_type = Some(0)).expect_error("unknown data type code 0");
}

#[test]
fn string_tensor_with_raw_data() {
    proto_case(|m| graph(m).initializer[0].data_type = Some(8)).expect_error("STRING");
}

#[test]
fn bad_constant_attribute_tensor() {
    proto_case(|m| {
        let mut t = tensor_f32("", &[3], &[1.0, 2.0]);
        t.name = None;
        let mut a = pb::AttributeProto::new();
        a.name = Some("value".into());
        a.type_ = Some(EnumOrUnknown::new(pb::attribute_proto::AttributeType::TENSOR));
        a.t = MessageField::some(t);
        let mut n = node("Constant", &[], &["c"], "const");
        n.attribute.push(a);
        graph(m).node.push(n);
    })
    .expect_error("node `const`");
}

#[test]
fn bad_sparse_initializer() {
    proto_case(|m| {
        let mut s = pb::SparseTensorProto::new();
        s.values = MessageField::some(tensor_f32("sp", &[2], &[1.0]));
        let mut idx = pb::TensorProto::new();
        idx.data_type = Some(7);
        idx.dims = vec![2];
        idx.int64_data = vec![0, 1];
        s.indices = MessageField::some(idx);
        s.dims = vec![8];
        graph(m).sparse_initializer.push(s);
    })
    .expect_error("tensor `sp`");
}

// ----- external data ---------------------------------------------------------------------------

#[test]
fn external_absolute_path() {
    proto_case(|m| external(m, &[("location", "/etc/passwd")])).expect_error("absolute paths are refused");
}

#[test]
fn external_dev_zero() {
    proto_case(|m| external(m, &[("location", "/dev/zero")])).expect_error("absolute paths are refused");
}

#[test]
fn external_dotdot_escape() {
    proto_case(|m| external(m, &[("location", "../secret.bin")])).expect_error("outside the model's folder");
}

#[test]
fn external_deep_dotdot_escape() {
    proto_case(|m| external(m, &[("location", "a/../../../../../../etc/passwd")])).expect_error("cannot open");
}

#[test]
fn external_symlink_escape() {
    let c = proto_case(|m| external(m, &[("location", "link.bin")]));
    std::os::unix::fs::symlink(c.dir.path().join("secret.bin"), c.model_dir().join("link.bin")).unwrap();
    c.expect_error("outside the model's folder");
}

#[test]
fn external_symlinked_folder_escape() {
    let c = proto_case(|m| external(m, &[("location", "sub/secret.bin")]));
    std::os::unix::fs::symlink(c.dir.path(), c.model_dir().join("sub")).unwrap();
    c.expect_error("outside the model's folder");
}

#[test]
fn external_location_is_a_folder() {
    let c = proto_case(|m| external(m, &[("location", "dir")]));
    std::fs::create_dir(c.model_dir().join("dir")).unwrap();
    c.expect_error("not a regular file");
}

#[test]
fn external_location_is_a_fifo() {
    let c = proto_case(|m| external(m, &[("location", "pipe")]));
    let ok = Command::new("mkfifo").arg(c.model_dir().join("pipe")).status().unwrap();
    assert!(ok.success());
    c.expect_error("not a regular file");
}

#[test]
fn external_missing_file() {
    proto_case(|m| external(m, &[("location", "nope.bin")])).expect_error("cannot open");
}

#[test]
fn external_without_location() {
    proto_case(|m| external(m, &[("offset", "0")])).expect_error("no `location`");
}

#[test]
fn external_empty_location() {
    proto_case(|m| external(m, &[("location", "")])).expect_error("empty `location`");
}

#[test]
fn external_offset_past_end() {
    proto_case(|m| external(m, &[("location", "w.bin"), ("offset", "8")])).expect_error("past the end");
}

#[test]
fn external_offset_far_past_end() {
    proto_case(|m| external(m, &[("location", "w.bin"), ("offset", "1000000000000")])).expect_error("past the end");
}

#[test]
fn external_offset_overflow() {
    proto_case(|m| external(m, &[("location", "w.bin"), ("offset", "18446744073709551610"), ("length", "16")]))
        .expect_error("overflows");
}

#[test]
fn external_negative_offset() {
    proto_case(|m| external(m, &[("location", "w.bin"), ("offset", "-4")])).expect_error("non-negative");
}

#[test]
fn external_non_numeric_length() {
    proto_case(|m| external(m, &[("location", "w.bin"), ("length", "16 bytes")])).expect_error("non-negative");
}

#[test]
fn external_length_mismatch() {
    proto_case(|m| external(m, &[("location", "w.bin"), ("length", "12")])).expect_error("need 16");
}

#[test]
fn external_huge_length() {
    proto_case(|m| external(m, &[("location", "w.bin"), ("length", "99999999999999999999999")]))
        .expect_error("too large");
}

#[test]
fn external_with_inline_data_too() {
    proto_case(|m| {
        external(m, &[("location", "w.bin")]);
        graph(m).initializer[0].raw_data = Some(vec![0; 16]);
    })
    .expect_error("also carries inline data");
}

#[test]
fn external_entries_without_external_location() {
    proto_case(|m| {
        external(m, &[("location", "w.bin")]);
        let w = &mut graph(m).initializer[0];
        w.data_location = Some(EnumOrUnknown::from_i32(0));
        w.raw_data = Some(vec![0; 16]);
    })
    .expect_error("data_location is not EXTERNAL");
}

#[test]
fn external_nul_in_location() {
    proto_case(|m| external(m, &[("location", "w.bin\0../../x")])).expect_error("NUL");
}

// ----- outputs ---------------------------------------------------------------------------------

#[test]
fn output_folder_missing() {
    let c = Case::with_proto(&base());
    let out = c.dir.path().join("no/such/folder/out.onnx");
    c.expect_error_writing(&out, "does not exist");
}

#[test]
fn output_is_a_folder() {
    let c = Case::with_proto(&base());
    let out = c.dir.path().join("taken");
    std::fs::create_dir(&out).unwrap();
    let output =
        Command::new(env!("CARGO_BIN_EXE_adaptc")).arg("rewrite").arg(&c.model).arg("-o").arg(&out).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("folder"));
    assert!(out.is_dir());
}

#[test]
fn bad_pipeline_fails_before_writing() {
    let c = Case::with_proto(&base());
    let out = c.dir.path().join("out.onnx");
    let output = Command::new(env!("CARGO_BIN_EXE_adaptc"))
        .args(["rewrite", c.model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-p", "no-such-pass"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-pass"));
    assert!(!out.exists());
}

/// A reader that closes the pipe early (`adaptc passes | head -1`) ends the process quietly:
/// no panic message, no "broken pipe" error.
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_is_not_a_panic() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_adaptc"))
        .arg("passes")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the process has started writing: its first write meets a closed pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}
