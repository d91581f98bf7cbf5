//! Hugging Face `tokenizer.json` files (BERT WordPiece, BPE, Unigram, …) for rows that hold
//! `text` rather than token ids, through the `tokenizers` crate (pure Rust: built without
//! Oniguruma or the C++ suffix arrays). Loaded offline from the file; the file's own padding
//! is switched off (batches are padded by [`crate::data`]), its truncation is kept unless
//! `max_len` replaces it.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Result, TrainError};

/// One text's tokens, as the model's inputs want them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

/// A loaded tokenizer.
pub struct TextTokenizer {
    inner: Tokenizer,
    file: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("file", &self.file).finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; `max_len` (tokens, special tokens included) replaces the file's
    /// truncation.
    pub fn from_file(file: &Path, max_len: Option<usize>) -> Result<TextTokenizer> {
        let err = |reason: String| TrainError::Tokenizer { file: file.to_path_buf(), reason };
        if !file.is_file() {
            return Err(err("no such file".into()));
        }
        let mut inner = Tokenizer::from_file(file).map_err(|e| err(format!("cannot load: {e}")))?;
        inner.with_padding(None);
        if let Some(max_length) = max_len {
            if max_length == 0 {
                return Err(err("max_len must be at least 1".into()));
            }
            inner
                .with_truncation(Some(TruncationParams { max_length, ..TruncationParams::default() }))
                .map_err(|e| err(format!("cannot truncate to {max_length} tokens: {e}")))?;
        }
        Ok(TextTokenizer { inner, file: file.to_path_buf() })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Tokenizes one text with the tokenizer's special tokens (`[CLS] … [SEP]` for BERT).
    pub fn encode(&self, text: &str) -> Result<Encoded, String> {
        let e = self.inner.encode(text, true).map_err(|e| format!("cannot tokenize: {e}"))?;
        let wide = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>();
        Ok(Encoded {
            input_ids: wide(e.get_ids()),
            attention_mask: wide(e.get_attention_mask()),
            token_type_ids: wide(e.get_type_ids()),
        })
    }
}
