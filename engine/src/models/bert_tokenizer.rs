//! BERT's WordPiece tokenizer (transformers' `BertTokenizer`, bert-base-uncased settings) via
//! the `tokenizers` crate, with BLIP's additions: the special tokens `[DEC]` (BLIP's
//! `bos_token`) and `[ENC]`, appended to the vocabulary as `blip.init_tokenizer` does (ids
//! 30522 and 30523 on bert-base-uncased, hence the text encoder's vocab of 30524), and
//! ImageReward's framing: `[CLS] tokens [SEP] [PAD]...`, truncated and padded to 35.
//!
//! Reads a tokenizer folder's `vocab.txt` (one token per line, id = line number) and, if
//! present, `do_lower_case` from `tokenizer_config.json` (default true: uncased). The pipeline
//! is transformers' for BERT: clean text, CJK characters split, lowercase + strip accents
//! (when uncased), split on whitespace and punctuation, greedy longest-match WordPiece with
//! `##` continuations, words over 100 characters -> `[UNK]`.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Tokenizer};

use super::tokenizer::frame_tokens;
use crate::weights::LoadError;

/// ImageReward's prompt length (`max_length=35` in `ImageReward.score`).
pub const IMAGE_REWARD_MAX_LENGTH: usize = 35;

/// BERT's own special tokens, in bert-base-uncased's vocab.
const BERT_SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
/// The tokens BLIP adds, in the order it adds them (so their ids follow the vocab in order).
pub const BLIP_ADDED_TOKENS: [&str; 2] = ["[DEC]", "[ENC]"];

/// One prompt, framed and padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BertEncoding {
    /// `max_length` ids: `[CLS]`, the prompt's tokens, `[SEP]`, then `[PAD]`.
    pub input_ids: Vec<u32>,
    /// 1 for `[CLS]`, the tokens and `[SEP]`, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Whether the prompt had to be cut to fit (a warning is logged too).
    pub truncated: bool,
}

/// BERT WordPiece with BLIP's special tokens and ImageReward's framing.
#[derive(Debug, Clone)]
pub struct BertTokenizer {
    tokenizer: Tokenizer,
    cls_token_id: u32,
    sep_token_id: u32,
    pad_token_id: u32,
    max_length: usize,
    source: PathBuf,
}

impl BertTokenizer {
    /// Load `vocab.txt` (+ optional `tokenizer_config.json`) from `dir`, add `[DEC]`/`[ENC]`
    /// unless the vocab has them, frame to [`IMAGE_REWARD_MAX_LENGTH`].
    pub fn from_folder(dir: &Path) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::MissingFolder {
                path: dir.to_path_buf(),
            });
        }
        let vocab_path = dir.join("vocab.txt");
        let bytes = std::fs::read(&vocab_path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                LoadError::MissingFile {
                    path: vocab_path.clone(),
                    hint: Some(
                        "ImageReward's tokenizer is bert-base-uncased's vocab.txt \
                         (e.g. from the google-bert/bert-base-uncased repo)"
                            .into(),
                    ),
                }
            } else {
                LoadError::Io {
                    path: vocab_path.clone(),
                    source,
                }
            }
        })?;
        let lowercase = read_do_lower_case(&dir.join("tokenizer_config.json"))?;
        let fail = |reason: String| LoadError::Tokenizer {
            path: vocab_path.clone(),
            reason,
        };
        let vocab = WordPiece::read_bytes(&bytes).map_err(|e| fail(e.to_string()))?;
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut tokenizer = Tokenizer::new(model);
        // strip_accents None: follows lowercase, as transformers' BertTokenizer.
        tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
        tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
        // Specials are matched whole in the raw text (transformers does the same); new ones
        // get the next ids, in this order.
        let specials: Vec<AddedToken> = BERT_SPECIALS
            .iter()
            .chain(BLIP_ADDED_TOKENS.iter())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        tokenizer.add_special_tokens(&specials);
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| fail(format!("special token `{token}` is not in the vocabulary")))
        };
        let (cls_token_id, sep_token_id, pad_token_id) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
        id("[UNK]")?;
        Ok(Self {
            tokenizer,
            cls_token_id,
            sep_token_id,
            pad_token_id,
            max_length: IMAGE_REWARD_MAX_LENGTH,
            source: vocab_path,
        })
    }

    /// The same tokenizer framing to `max_length` positions instead (at least 2).
    pub fn with_max_length(mut self, max_length: usize) -> Self {
        assert!(
            max_length >= 2,
            "max_length must leave room for [CLS] and [SEP]"
        );
        self.max_length = max_length;
        self
    }

    /// Positions per prompt.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Vocabulary size with the added tokens (30524 for bert-base-uncased + BLIP's two).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Id of `[PAD]`.
    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id
    }

    /// Tokenize one prompt into exactly [`max_length`](Self::max_length) ids, as
    /// `tokenizer(prompt, padding='max_length', truncation=True, max_length=35)`. A prompt
    /// that does not fit is truncated (`[CLS]` and `[SEP]` kept) with a logged warning.
    pub fn encode(&self, prompt: &str) -> Result<BertEncoding, LoadError> {
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| LoadError::Tokenizer {
                path: self.source.clone(),
                reason: format!("encoding {prompt:?}: {e}"),
            })?;
        let framed = frame_tokens(
            encoding.get_ids(),
            [self.cls_token_id, self.sep_token_id, self.pad_token_id],
            self.max_length,
            "ImageReward",
            prompt,
        );
        let mut attention_mask = vec![1; framed.num_tokens];
        attention_mask.resize(self.max_length, 0);
        Ok(BertEncoding {
            input_ids: framed.input_ids,
            attention_mask,
            truncated: framed.truncated,
        })
    }

    /// One prompt as `[1, max_length]` tensors: the ids and the attention mask (1.0 / 0.0).
    pub fn tensors<B: Backend>(
        &self,
        prompt: &str,
        device: &B::Device,
    ) -> Result<(Tensor<B, 2, Int>, Tensor<B, 2>), LoadError> {
        let encoded = self.encode(prompt)?;
        let n = self.max_length;
        let ids: Vec<i64> = encoded.input_ids.iter().map(|&i| i64::from(i)).collect();
        let mask: Vec<f32> = encoded.attention_mask.iter().map(|&m| m as f32).collect();
        Ok((
            Tensor::from_data(TensorData::new(ids, [1, n]), device),
            Tensor::from_data(TensorData::new(mask, [1, n]), device),
        ))
    }
}

/// `do_lower_case` from a `tokenizer_config.json` (true when the file or the key is absent).
fn read_do_lower_case(path: &Path) -> Result<bool, LoadError> {
    if !path.is_file() {
        return Ok(true);
    }
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LoadError::BadConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    match json.get("do_lower_case") {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(LoadError::BadConfig {
            path: path.to_path_buf(),
            reason: format!("do_lower_case is {other}, expected true or false"),
        }),
    }
}
