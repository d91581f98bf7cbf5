//! The pass registry: pipeline name → description, option schema and constructor.

use std::collections::BTreeMap;
use std::fmt;

use crate::options::{OptionInfo, Options};
use crate::pass::{Pass, PassError};
use crate::pipeline::PassSpec;

/// Builds a pass from its checked options.
pub type BuildFn = fn(&Options) -> Result<Box<dyn Pass>, PassError>;

/// Everything the registry knows about one pass; `adaptc passes` prints it.
#[derive(Clone)]
pub struct PassInfo {
    /// The pipeline name (kebab-case verb).
    pub name: &'static str,
    /// One line.
    pub summary: &'static str,
    pub options: Vec<OptionInfo>,
    /// A pipeline using the pass, for help text.
    pub example: &'static str,
    pub build: BuildFn,
}

impl fmt::Debug for PassInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassInfo")
            .field("name", &self.name)
            .field("summary", &self.summary)
            .field("options", &self.options)
            .field("example", &self.example)
            .finish_non_exhaustive()
    }
}

/// Pass name → [`PassInfo`].
#[derive(Clone, Debug, Default)]
pub struct Registry {
    passes: BTreeMap<&'static str, PassInfo>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The passes adaptc ships: `dce`, `cse`, `fold-constants`.
    pub fn builtin() -> Registry {
        let mut r = Registry::new();
        r.register(crate::canonicalize::dce::info());
        r.register(crate::canonicalize::cse::info());
        r.register(crate::canonicalize::fold_constants::info());
        r.register(crate::adapters::lora::info());
        r.register(crate::adapters::merge::info());
        r.register(crate::adapters::as_inputs::info());
        r.register(crate::adapters::ia3::info());
        r.register(crate::adapters::bottleneck::info());
        r.register(crate::adapters::prompt::info());
        r.register(crate::adapters::trainable::info());
        r.register(crate::heads::add_head::info());
        r.register(crate::lower::specialize_shapes::info());
        r.register(crate::lower::decompose::info());
        r.register(crate::lower::autocast::info());
        r.register(crate::lower::fuse_attention::info());
        r.register(crate::autodiff::info());
        r.register(crate::autodiff::checkpoint::info());
        r.register(crate::autodiff::optimizer::info());
        r.register(crate::compress::quantize::info());
        r.register(crate::compress::dequantize::info());
        r.register(crate::compress::prune_layers::info());
        r.register(crate::compress::prune::info());
        r.register(crate::compress::factorize::info());
        r.register(crate::compress::prune_channels::info());
        r
    }

    /// Registers a pass, returning the entry it replaces (if one had the same name).
    pub fn register(&mut self, info: PassInfo) -> Option<PassInfo> {
        self.passes.insert(info.name, info)
    }

    pub fn get(&self, name: &str) -> Option<&PassInfo> {
        self.passes.get(name)
    }

    /// The entry for `name`, or [`PassError::UnknownPass`] with the closest known name.
    pub fn lookup(&self, name: &str) -> Result<&PassInfo, PassError> {
        self.get(name).ok_or_else(|| PassError::UnknownPass {
            name: name.to_string(),
            suggestion: did_you_mean(name, self.passes.keys().copied()),
        })
    }

    /// All entries, sorted by name.
    pub fn infos(&self) -> Vec<&PassInfo> {
        self.passes.values().collect()
    }

    /// Pass names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.passes.keys().copied().collect()
    }

    /// Builds the pass `spec` names with its options (checked against the pass's schema).
    pub fn build(&self, spec: &PassSpec) -> Result<Box<dyn Pass>, PassError> {
        let info = self.lookup(&spec.name)?;
        let options = Options::new(spec, &info.options)?;
        (info.build)(&options)
    }
}

/// The candidate closest to `word`, if it is a likely typo: edit distance (ignoring case) at
/// most 2, or a third of the word's length for long names; failing that, the only candidate
/// that starts with `word` (at least 3 characters: `fold` → `fold-constants`).
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(2);
    let closest = candidates
        .iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), *c))
        .filter(|&(d, _)| d <= limit)
        .min()
        .map(|(_, c)| c.to_string());
    if closest.is_some() || lower.chars().count() < 3 {
        return closest;
    }
    match candidates.iter().filter(|c| c.to_lowercase().starts_with(&lower)).collect::<Vec<_>>()[..] {
        [only] => Some(only.to_string()),
        _ => None,
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::check_schema;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("dce", "dce"), 0);
        assert_eq!(edit_distance("fold-constant", "fold-constants"), 1);
    }

    #[test]
    fn builtin_passes_are_listed_sorted_and_well_formed() {
        let r = Registry::builtin();
        let names = r.names();
        for expected in ["cse", "dce", "decompose", "fold-constants", "specialize-shapes"] {
            assert!(names.contains(&expected), "{expected} is not registered: {names:?}");
        }
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        let infos = r.infos();
        assert_eq!(infos.iter().map(|i| i.name).collect::<Vec<_>>(), r.names());
        for info in infos {
            check_schema(info.name, &info.options).unwrap();
            assert!(!info.summary.is_empty() && !info.summary.contains('\n'), "{}", info.name);
            let example = crate::Pipeline::parse(info.example).unwrap();
            assert!(example.passes.iter().any(|p| p.name == info.name), "{}", info.example);
            for p in &example.passes {
                r.build(p).unwrap();
            }
            let pass = r.build(&PassSpec::new(info.name)).unwrap();
            assert_eq!(pass.name(), info.name);
        }
    }

    #[test]
    fn unknown_names_get_suggestions() {
        let r = Registry::builtin();
        match r.lookup("fold-constant") {
            Err(PassError::UnknownPass { name, suggestion }) => {
                assert_eq!(name, "fold-constant");
                assert_eq!(suggestion.as_deref(), Some("fold-constants"));
            }
            other => panic!("{other:?}"),
        }
        for (typo, expected) in [("DCE", "dce"), ("fold", "fold-constants"), ("cse ", "cse")] {
            match r.lookup(typo) {
                Err(PassError::UnknownPass { suggestion, .. }) => {
                    assert_eq!(suggestion.as_deref(), Some(expected))
                }
                other => panic!("{other:?}"),
            }
        }
        match r.lookup("no-such-pass") {
            Err(PassError::UnknownPass { suggestion, .. }) => assert_eq!(suggestion, None),
            other => panic!("{other:?}"),
        }
        let e = r.build(&PassSpec::new("dce").with("bogus", "1")).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("pass `dce`: option `bogus`: unknown option; `dce` takes no options"));
    }
}
