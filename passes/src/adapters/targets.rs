//! Choosing layers by module path, the way PEFT's `target_modules` does.
//!
//! A plain name matches a module path equal to it or ending in `.name` (`query` matches
//! `encoder.layer.0.attention.self.query`; `output.dense` matches both `….output.dense` and
//! `….attention.output.dense`). `re:<regex>` must match the whole path. `all-linear` selects
//! every linear layer but the output head (a layer whose output is a graph output, like
//! `lm_head`). `layers` limits the choice to blocks with those indices; `exclude` removes
//! paths matched the same way.

use regex::Regex;

use super::record::CREATED_BY;
use crate::pass::PassError;
use crate::pattern::{block_index, find_linear_layers, LinearLayer};

/// One `targets`/`exclude` entry.
#[derive(Clone, Debug)]
pub enum Target {
    Suffix(String),
    Regex(Regex),
    AllLinear,
}

impl Target {
    pub fn parse(pass: &str, option: &str, text: &str) -> Result<Target, PassError> {
        if text == "all-linear" {
            return Ok(Target::AllLinear);
        }
        if let Some(re) = text.strip_prefix("re:") {
            return Regex::new(&format!("^(?:{re})$"))
                .map(Target::Regex)
                .map_err(|e| PassError::bad_option(pass, option, format!("bad regex `{re}`: {e}")));
        }
        if text.is_empty() {
            return Err(PassError::bad_option(pass, option, "empty target"));
        }
        Ok(Target::Suffix(text.to_string()))
    }

    /// Whether `path` matches (`AllLinear` matches every path; the head is excluded by
    /// [`Selection::select`]).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Target::Suffix(s) => path == s || path.ends_with(&format!(".{s}")),
            Target::Regex(re) => re.is_match(path),
            Target::AllLinear => true,
        }
    }
}

/// `targets`, `exclude` and `layers` together.
#[derive(Clone, Debug)]
pub struct Selection {
    pub targets: Vec<Target>,
    pub exclude: Vec<Target>,
    pub layers: Option<Vec<usize>>,
}

impl Selection {
    /// Parses the option lists of `pass`.
    pub fn parse(
        pass: &str,
        targets: &[String],
        exclude: &[String],
        layers: &[String],
    ) -> Result<Selection, PassError> {
        let targets = targets.iter().map(|t| Target::parse(pass, "targets", t)).collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(PassError::bad_option(
                pass,
                "targets",
                "no targets given (e.g. targets=query,value or all-linear)",
            ));
        }
        let exclude = exclude.iter().map(|t| Target::parse(pass, "exclude", t)).collect::<Result<Vec<_>, _>>()?;
        let layers = if layers.is_empty() {
            None
        } else {
            Some(
                layers
                    .iter()
                    .map(|l| {
                        l.parse()
                            .map_err(|_| PassError::bad_option(pass, "layers", format!("`{l}` is not a block index")))
                    })
                    .collect::<Result<Vec<usize>, _>>()?,
            )
        };
        Ok(Selection { targets, exclude, layers })
    }

    fn wants(&self, path: &str) -> bool {
        self.targets.iter().any(|t| t.matches(path))
            && !self.exclude.iter().any(|t| t.matches(path))
            && self.layers.as_ref().is_none_or(|ls| block_index(path).is_some_and(|b| ls.contains(&b)))
    }

    /// The linear layers of `graph` this selection picks, in graph order. Layers without a
    /// module path cannot be targeted by name and are skipped, and so are the MatMuls adapter
    /// passes inserted themselves (tagged [`CREATED_BY`]: `MatMul(x, Transpose(lora_A))` has
    /// the shape of a linear layer but is part of an adapter).
    pub fn select(&self, graph: &adaptc_ir::Graph) -> Vec<LinearLayer> {
        let all_linear = self.targets.iter().any(|t| matches!(t, Target::AllLinear));
        base_linear_layers(graph)
            .into_iter()
            .filter(|l| {
                let Some(path) = l.module_path.as_deref() else {
                    return false;
                };
                if all_linear
                    && graph.is_graph_output(&l.output)
                    && !self.targets.iter().any(|t| !matches!(t, Target::AllLinear) && t.matches(path))
                {
                    return false;
                }
                self.wants(path)
            })
            .collect()
    }

    /// The error for a selection that matched nothing in `graph`: names the pass and the
    /// selection, and lists the module paths that could have been chosen (the first 20).
    pub fn no_match(&self, pass: &str, graph: &adaptc_ir::Graph, described: &str) -> PassError {
        let layers = base_linear_layers(graph);
        let paths: Vec<&str> = layers.iter().filter_map(|l| l.module_path.as_deref()).collect();
        let unnamed = layers.len() - paths.len();
        let mut reason = format!("no linear layer matches {described}");
        if paths.is_empty() {
            reason += &format!("; the graph has {} linear layer(s), none with a module path", layers.len());
        } else {
            const SHOWN: usize = 20;
            let shown = paths[..paths.len().min(SHOWN)].join(", ");
            reason += &format!("; available module paths ({}): {shown}", paths.len());
            if paths.len() > SHOWN {
                reason += &format!(", … and {} more", paths.len() - SHOWN);
            }
            if unnamed > 0 {
                reason += &format!(" ({unnamed} more without a module path)");
            }
        }
        PassError::failed(pass, reason)
    }

    /// Text describing the selection, for "nothing matched" errors.
    pub fn describe(targets: &[String], exclude: &[String], layers: &[String]) -> String {
        let mut s = format!("targets={}", targets.join(","));
        if !exclude.is_empty() {
            s += &format!(" exclude={}", exclude.join(","));
        }
        if !layers.is_empty() {
            s += &format!(" layers={}", layers.join(","));
        }
        s
    }
}

/// The linear layers of `graph` that are not part of an inserted adapter.
fn base_linear_layers(graph: &adaptc_ir::Graph) -> Vec<LinearLayer> {
    find_linear_layers(graph).into_iter().filter(|l| graph.node(l.node).metadata.get(CREATED_BY).is_none()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_matching_follows_peft() {
        let t = Target::parse("p", "targets", "query").unwrap();
        assert!(t.matches("encoder.layer.0.attention.self.query"));
        assert!(t.matches("query"));
        assert!(!t.matches("encoder.layer.0.attention.self.query_proj"));
        let t = Target::parse("p", "targets", "output.dense").unwrap();
        assert!(t.matches("encoder.layer.0.output.dense"));
        assert!(t.matches("encoder.layer.0.attention.output.dense"));
        assert!(!t.matches("encoder.layer.0.attention.output.dense2"));
    }

    #[test]
    fn regex_matches_the_whole_path() {
        let t = Target::parse("p", "targets", r"re:.*layer\.[01]\..*query").unwrap();
        assert!(t.matches("encoder.layer.0.attention.self.query"));
        assert!(!t.matches("encoder.layer.2.attention.self.query"));
        assert!(Target::parse("p", "targets", "re:(").unwrap_err().to_string().contains("bad regex"));
    }

    #[test]
    fn layers_and_exclude_narrow_the_choice() {
        let s = Selection::parse(
            "p",
            &["query".into(), "value".into()],
            &["re:.*layer\\.1\\..*value".into()],
            &["0".into(), "1".into()],
        )
        .unwrap();
        assert!(s.wants("encoder.layer.0.attention.self.value"));
        assert!(s.wants("encoder.layer.1.attention.self.query"));
        assert!(!s.wants("encoder.layer.1.attention.self.value"));
        assert!(!s.wants("encoder.layer.2.attention.self.query"));
        assert!(Selection::parse("p", &[], &[], &[]).is_err());
        assert!(Selection::parse("p", &["q".into()], &[], &["x".into()]).is_err());
    }
}
