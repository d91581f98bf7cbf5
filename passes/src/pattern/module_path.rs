//! Recovering PyTorch module paths (`encoder.layer.0.attention.self.query`) from what exporters
//! leave in a graph.
//!
//! Three sources, most to least reliable:
//! 1. the node metadata `pkg.torch.onnx.name_scopes` written by `torch.onnx.export(dynamo=True)`:
//!    a Python `repr` of a list, the chain of module paths followed by the op's own name;
//! 2. node names of the TorchScript exporter: `/encoder/layer.0/attention/self/query/MatMul`;
//! 3. parameter names of initializers: `classifier.weight`, `transformer.h.0.attn.c_attn.bias`.
//!
//! Exporter-made names (`node_MatMul_83`, `val_84`, `onnx::MatMul_101`) carry no path.

use adaptc_ir::{Graph, NodeId};

/// The node metadata key under which the dynamo exporter records the module chain.
pub const NAME_SCOPES_KEY: &str = "pkg.torch.onnx.name_scopes";

/// Where a module path came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PathSource {
    /// Node metadata `pkg.torch.onnx.name_scopes`.
    NameScopes,
    /// A TorchScript-style node name (`/a/b.0/c/MatMul`).
    NodeName,
    /// A parameter-style initializer name (`a.b.c.weight`).
    Initializer,
    /// No path could be recovered.
    None,
}

/// Parses the Python `repr` of a list of strings, as the exporter writes `name_scopes`:
/// `"['', 'encoder', \"it's\"]"`. Single and double quotes and Python escapes (`\\`, `\'`,
/// `\"`, `\n`, `\t`, `\r`, `\0`, `\xhh`, `\uXXXX`, `\UXXXXXXXX`) are understood; a trailing
/// comma is allowed. Anything else (non-string items, unbalanced quotes, text after the list)
/// gives `None`.
pub fn parse_name_scopes(s: &str) -> Option<Vec<String>> {
    let mut p = ReprParser { chars: s.chars().collect(), pos: 0 };
    p.skip_ws();
    p.expect('[')?;
    let mut items = Vec::new();
    loop {
        p.skip_ws();
        match p.peek()? {
            ']' => {
                p.pos += 1;
                break;
            }
            '\'' | '"' => {
                items.push(p.string()?);
                p.skip_ws();
                match p.next()? {
                    ',' => continue,
                    ']' => break,
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
    p.skip_ws();
    if p.pos != p.chars.len() {
        return None;
    }
    Some(items)
}

struct ReprParser {
    chars: Vec<char>,
    pos: usize,
}

impl ReprParser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn expect(&mut self, c: char) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// A quoted string; the cursor is on the opening quote.
    fn string(&mut self) -> Option<String> {
        let quote = self.next()?;
        let mut out = String::new();
        loop {
            match self.next()? {
                c if c == quote => return Some(out),
                '\n' => return None,
                '\\' => {
                    let c = match self.next()? {
                        '\\' => '\\',
                        '\'' => '\'',
                        '"' => '"',
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        'a' => '\u{7}',
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'v' => '\u{b}',
                        'x' => self.hex(2)?,
                        'u' => self.hex(4)?,
                        'U' => self.hex(8)?,
                        _ => return None,
                    };
                    out.push(c);
                }
                c => out.push(c),
            }
        }
    }

    fn hex(&mut self, digits: usize) -> Option<char> {
        let mut v = 0u32;
        for _ in 0..digits {
            v = v.checked_mul(16)? + self.next()?.to_digit(16)?;
        }
        char::from_u32(v)
    }
}

/// Whether `s` looks like a dotted module path: non-empty components separated by `.`, with no
/// whitespace, `/` or `:` (which mark exporter-made names such as `onnx::MatMul_101`).
pub fn is_module_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|c| !c.is_empty())
        && !s.chars().any(|c| c.is_whitespace() || c == '/' || c == ':' || c == '\'' || c == '"')
}

/// The module path in a `name_scopes` list: the element before the op's own name (the last
/// element). `None` when the list is too short, the op sits at the root (`['', 'linear']`) or
/// the element is not a module path.
pub fn path_from_name_scopes(scopes: &[String]) -> Option<String> {
    let (_, chain) = scopes.split_last()?;
    let last = chain.last()?;
    is_module_path(last).then(|| last.clone())
}

/// The module path in a TorchScript node name: `/encoder/layer.0/attention/self/query/MatMul` →
/// `encoder.layer.0.attention.self.query`. Names that do not start with `/` (`node_MatMul_83`)
/// or hold only the op name (`/MatMul`) give `None`.
pub fn path_from_node_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (_, scopes) = parts.split_last()?;
    if scopes.is_empty() {
        return None;
    }
    let path = scopes.join(".");
    is_module_path(&path).then_some(path)
}

/// The module path in the name of a node an adapter pass inserted, `<module path>/<role>/<Op>`
/// (`model.layers.0.mlp.gate_proj/lora_add/Add` → `model.layers.0.mlp.gate_proj`): a dotted
/// path before the first `/`. `None` for other names (`node_linear_4`, `grad/…`, `loss/…`).
pub fn path_from_adapter_node_name(name: &str) -> Option<String> {
    let (first, _) = name.split_once('/')?;
    (first.contains('.') && is_module_path(first)).then(|| first.to_string())
}

/// The module path in a parameter name: `classifier.weight` → `classifier`,
/// `transformer.h.0.attn.c_attn.bias` → `transformer.h.0.attn.c_attn`. Other names (`val_84`,
/// `onnx::MatMul_101`, a bare `weight`) give `None`.
pub fn path_from_initializer(name: &str) -> Option<String> {
    let path = name.strip_suffix(".weight").or_else(|| name.strip_suffix(".bias"))?;
    is_module_path(path).then(|| path.to_string())
}

/// The block (layer) index in a module path: the integer component right after `layer`,
/// `layers`, `h`, `block` or `blocks` (the first such pair wins).
/// `encoder.layer.3.attention.self.query` → 3, `transformer.h.0.attn.c_attn` → 0,
/// `pooler.dense` → `None`.
pub fn block_index(module_path: &str) -> Option<usize> {
    block_of(module_path).map(|(_, index)| index)
}

/// The block container and index of a module path: `encoder.layer.3.attention` →
/// (`encoder.layer`, 3), `model.layers.0.mlp` → (`model.layers`, 0); the first `layer`,
/// `layers`, `h`, `block` or `blocks` component followed by an integer wins.
pub fn block_of(module_path: &str) -> Option<(String, usize)> {
    let parts: Vec<&str> = module_path.split('.').collect();
    parts.windows(2).enumerate().find_map(|(i, w)| {
        let container = matches!(w[0], "layer" | "layers" | "h" | "block" | "blocks");
        let digits = !w[1].is_empty() && w[1].bytes().all(|b| b.is_ascii_digit());
        if container && digits {
            Some((parts[..=i].join("."), w[1].parse().ok()?))
        } else {
            None
        }
    })
}

/// The module path of a node's `name_scopes` metadata, if it has a parseable one.
pub fn node_name_scopes_path(graph: &Graph, node: NodeId) -> Option<String> {
    let raw = graph.node(node).metadata.get(NAME_SCOPES_KEY)?;
    path_from_name_scopes(&parse_name_scopes(raw)?)
}

/// Recovers a module path for a pattern made of `nodes` (most significant first) that reads the
/// parameters `initializers` (most significant first): every node's `name_scopes` first, then
/// every node's name, then the initializer names.
pub fn recover_module_path(graph: &Graph, nodes: &[NodeId], initializers: &[&str]) -> (Option<String>, PathSource) {
    if let Some(p) = nodes.iter().find_map(|&n| node_name_scopes_path(graph, n)) {
        return (Some(p), PathSource::NameScopes);
    }
    if let Some(p) = nodes.iter().find_map(|&n| path_from_node_name(&graph.node(n).name)) {
        return (Some(p), PathSource::NodeName);
    }
    if let Some(p) = initializers.iter().find_map(|i| path_from_initializer(i)) {
        return (Some(p), PathSource::Initializer);
    }
    (None, PathSource::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_exporter_repr() {
        let s = "['', 'encoder', 'encoder.layer.0', 'encoder.layer.0.attention', \
                 'encoder.layer.0.attention.self', 'encoder.layer.0.attention.self.query', 'linear']";
        let v = parse_name_scopes(s).unwrap();
        assert_eq!(v.len(), 7);
        assert_eq!(v[0], "");
        assert_eq!(v[6], "linear");
        assert_eq!(path_from_name_scopes(&v).as_deref(), Some("encoder.layer.0.attention.self.query"));
    }

    #[test]
    fn parses_odd_quoting() {
        // Python switches to double quotes when the string holds a single quote.
        let v = parse_name_scopes(r#"["it's", 'a\'b', "q\"x", 'back\\slash', 'tab\there', '\x41\u00e9\U0001F600']"#)
            .unwrap();
        assert_eq!(v, strings(&["it's", "a'b", "q\"x", "back\\slash", "tab\there", "Aé😀"]));
        // Whitespace and a trailing comma.
        assert_eq!(parse_name_scopes("  [ 'a' ,\n 'b', ]  ").unwrap(), strings(&["a", "b"]));
        // Brackets and commas inside strings are not structure.
        assert_eq!(parse_name_scopes("['a,b', ']', '[']").unwrap(), strings(&["a,b", "]", "["]));
    }

    #[test]
    fn empty_list() {
        assert_eq!(parse_name_scopes("[]").unwrap(), Vec::<String>::new());
        assert_eq!(parse_name_scopes(" [ ] ").unwrap(), Vec::<String>::new());
        assert_eq!(path_from_name_scopes(&[]), None);
        assert_eq!(path_from_name_scopes(&strings(&["linear"])), None);
        assert_eq!(path_from_name_scopes(&strings(&["", "linear"])), None);
    }

    #[test]
    fn garbage_is_none() {
        for s in [
            "",
            "encoder.layer.0",
            "[",
            "['a'",
            "['a' 'b']",
            "['a',, 'b']",
            "[,]",
            "['a'] trailing",
            "[1, 2]",
            "['a', None]",
            "['unterminated]",
            "['bad escape \\q']",
            "['\\x4']",
            "['\\udc00']",
            "('a', 'b')",
            "['line\nbreak']",
        ] {
            assert_eq!(parse_name_scopes(s), None, "{s:?}");
        }
    }

    #[test]
    fn top_level_module_is_not_dotted() {
        let v = parse_name_scopes("['', 'lm_head', 'linear_28']").unwrap();
        assert_eq!(path_from_name_scopes(&v).as_deref(), Some("lm_head"));
    }

    #[test]
    fn node_names() {
        assert_eq!(
            path_from_node_name("/encoder/layer.0/attention/self/query/MatMul").as_deref(),
            Some("encoder.layer.0.attention.self.query")
        );
        assert_eq!(path_from_node_name("/classifier/Gemm").as_deref(), Some("classifier"));
        assert_eq!(path_from_node_name("node_MatMul_83"), None);
        assert_eq!(path_from_node_name("node_linear_3"), None);
        assert_eq!(path_from_node_name("/MatMul"), None);
        assert_eq!(path_from_node_name("/"), None);
        assert_eq!(path_from_node_name(""), None);
        assert_eq!(path_from_node_name("//MatMul"), None);
        assert_eq!(path_from_node_name("/a//b/MatMul"), None);
    }

    #[test]
    fn initializer_names() {
        assert_eq!(path_from_initializer("classifier.weight").as_deref(), Some("classifier"));
        assert_eq!(
            path_from_initializer("transformer.h.0.attn.c_attn.weight").as_deref(),
            Some("transformer.h.0.attn.c_attn")
        );
        assert_eq!(path_from_initializer("pooler.dense.bias").as_deref(), Some("pooler.dense"));
        assert_eq!(path_from_initializer("val_84"), None);
        assert_eq!(path_from_initializer("onnx::MatMul_101"), None);
        assert_eq!(path_from_initializer("onnx::Add_102.bias"), None);
        assert_eq!(path_from_initializer("weight"), None);
        assert_eq!(path_from_initializer(".weight"), None);
        assert_eq!(path_from_initializer("a..b.weight"), None);
        assert_eq!(path_from_initializer("classifier.weight_orig"), None);
    }

    #[test]
    fn block_indices() {
        assert_eq!(block_index("encoder.layer.3.attention.self.query"), Some(3));
        assert_eq!(block_index("model.layers.12.mlp.up_proj"), Some(12));
        assert_eq!(block_index("transformer.h.0.attn.c_attn"), Some(0));
        assert_eq!(block_index("blocks.7.attn.qkv"), Some(7));
        // T5: the block index, not the sub-layer index after it.
        assert_eq!(block_index("encoder.block.2.layer.0.SelfAttention.q"), Some(2));
        assert_eq!(block_index("pooler.dense"), None);
        assert_eq!(block_index("lm_head"), None);
        assert_eq!(block_index("layer"), None);
        assert_eq!(block_index("layers.x.fc"), None);
        assert_eq!(block_index("layers.-1.fc"), None);
        assert_eq!(block_index("mlp.0.fc"), None);
        assert_eq!(block_index("layers.99999999999999999999999.fc"), None);
    }
}
