//! CLIP's byte-level BPE tokenizer, via the `tokenizers` crate, with CLIP's framing:
//! `<|startoftext|> tokens... <|endoftext|> pad...`, truncated and padded to 77 positions.
//!
//! Reads a transformers/diffusers tokenizer folder: `tokenizer.json` when present, else
//! `vocab.json` + `merges.txt` (built into the same pipeline transformers' `CLIPTokenizer`
//! uses: NFC, whitespace runs -> one space, lowercase; CLIP's split regex; byte-level BPE with
//! `</w>` word ends). Special tokens and the length come from `special_tokens_map.json` and
//! `tokenizer_config.json` (the former wins, as in transformers): SD 1.x pads with
//! `<|endoftext|>`, SD 2.x with `!`, and the padded positions reach the UNet, so this matters.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::weights::LoadError;

/// CLIP's context length (`max_position_embeddings` of every CLIP text model).
pub const CLIP_MAX_LENGTH: usize = 77;

/// CLIP's pre-tokenisation regex (transformers' `CLIPTokenizer`).
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// One prompt, framed and padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// `max_length` ids: BOS, the prompt's tokens, EOS, then padding.
    pub input_ids: Vec<u32>,
    /// Ids before padding, BOS and EOS included (at most `max_length`).
    pub num_tokens: usize,
    /// Whether the prompt had to be cut to fit (a warning is logged too).
    pub truncated: bool,
}

/// CLIP tokenizer: BPE plus CLIP's BOS/EOS framing, truncation and padding.
#[derive(Debug, Clone)]
pub struct CLIPTokenizer {
    tokenizer: Tokenizer,
    bos_token_id: u32,
    eos_token_id: u32,
    pad_token_id: u32,
    /// The id unknown words map to, where the vocabulary has one of its own (a word-level
    /// vocabulary such as Tiny World's); `None` for CLIP's BPE, which spells any word.
    unk_token_id: Option<u32>,
    max_length: usize,
    source: PathBuf,
}

/// Special tokens and length as the tokenizer folder's JSON files give them.
struct Settings {
    bos: String,
    eos: String,
    pad: String,
    unk: String,
    max_length: usize,
}

impl CLIPTokenizer {
    /// Load from a tokenizer folder (`tokenizer.json`, or `vocab.json` + `merges.txt`, plus the
    /// optional `tokenizer_config.json` / `special_tokens_map.json`).
    pub fn from_folder(dir: &Path) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::MissingFolder {
                path: dir.to_path_buf(),
            });
        }
        let settings = Settings::read(dir)?;
        let json = dir.join("tokenizer.json");
        let tokenizer = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| LoadError::Tokenizer {
                path: json.clone(),
                reason: e.to_string(),
            })?
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            for file in [&vocab, &merges] {
                if !file.is_file() {
                    return Err(LoadError::MissingFile {
                        path: file.clone(),
                        hint: Some(
                            "a CLIP tokenizer needs tokenizer.json or vocab.json + merges.txt"
                                .into(),
                        ),
                    });
                }
            }
            bpe_from_vocab_merges(&vocab, &merges, &settings)?
        };
        Self::new(tokenizer, &settings, dir)
    }

    fn new(mut tokenizer: Tokenizer, s: &Settings, source: &Path) -> Result<Self, LoadError> {
        // Framing and padding are done here, the CLIP way, whatever post-processor or padding
        // the file configures.
        tokenizer.with_truncation(None).ok();
        tokenizer.with_padding(None);
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| LoadError::Tokenizer {
                    path: source.to_path_buf(),
                    reason: format!("special token `{token}` is not in the vocabulary"),
                })
        };
        let (bos_token_id, eos_token_id, pad_token_id) = (id(&s.bos)?, id(&s.eos)?, id(&s.pad)?);
        // CLIP names `<|endoftext|>` its unknown token, yet never emits it for a word.
        let unk_token_id = tokenizer
            .token_to_id(&s.unk)
            .filter(|&unk| unk != eos_token_id && unk != pad_token_id);
        if s.max_length < 2 {
            return Err(LoadError::BadConfig {
                path: source.join("tokenizer_config.json"),
                reason: format!(
                    "model_max_length {} leaves no room for BOS and EOS",
                    s.max_length
                ),
            });
        }
        Ok(Self {
            tokenizer,
            bos_token_id,
            eos_token_id,
            pad_token_id,
            unk_token_id,
            max_length: s.max_length,
            source: source.to_path_buf(),
        })
    }

    /// The same tokenizer framing to `max_length` positions instead (at least 2).
    pub fn with_max_length(mut self, max_length: usize) -> Self {
        assert!(
            max_length >= 2,
            "max_length must leave room for BOS and EOS"
        );
        self.max_length = max_length;
        self
    }

    /// Positions per prompt (77 for CLIP).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Id of `<|startoftext|>`.
    pub fn bos_token_id(&self) -> u32 {
        self.bos_token_id
    }

    /// Id of `<|endoftext|>`.
    pub fn eos_token_id(&self) -> u32 {
        self.eos_token_id
    }

    /// Id used for padding (`<|endoftext|>` for SD 1.x and OpenAI CLIP, `!` for SD 2.x).
    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Tokenize one prompt into exactly [`max_length`](Self::max_length) ids. An empty prompt
    /// is allowed (classifier-free guidance's unconditional branch): `[BOS, EOS, pad...]`.
    /// A prompt that does not fit is truncated (BOS and EOS kept) with a logged warning.
    pub fn encode(&self, prompt: &str) -> Result<TokenizedPrompt, LoadError> {
        let encoding = self.raw_encoding(prompt)?;
        let framed = frame_tokens(
            encoding.get_ids(),
            [self.bos_token_id, self.eos_token_id, self.pad_token_id],
            self.max_length,
            "CLIP",
            prompt,
        );
        let (input_ids, num_tokens, truncated) =
            (framed.input_ids, framed.num_tokens, framed.truncated);
        Ok(TokenizedPrompt {
            input_ids,
            num_tokens,
            truncated,
        })
    }

    /// The vocabulary's tokens of `prompt`, unframed.
    fn raw_encoding(&self, prompt: &str) -> Result<tokenizers::Encoding, LoadError> {
        self.tokenizer
            .encode(prompt, false)
            .map_err(|e| LoadError::Tokenizer {
                path: self.source.clone(),
                reason: format!("encoding {prompt:?}: {e}"),
            })
    }

    /// The words of `prompt` the vocabulary does not have (each once, in order): they all read
    /// as one unknown token, so they cannot shape the result. Always empty for a BPE
    /// vocabulary, which spells any word from pieces.
    pub fn unknown_words(&self, prompt: &str) -> Result<Vec<String>, LoadError> {
        let Some(unk) = self.unk_token_id else {
            return Ok(Vec::new());
        };
        let encoding = self.raw_encoding(prompt)?;
        let mut words: Vec<String> = Vec::new();
        for (&id, &(start, end)) in encoding.get_ids().iter().zip(encoding.get_offsets()) {
            let word = prompt.get(start..end).unwrap_or_default().to_string();
            if id == unk && !word.is_empty() && !words.contains(&word) {
                words.push(word);
            }
        }
        Ok(words)
    }

    /// [`encode`](Self::encode) each prompt.
    pub fn encode_batch(&self, prompts: &[&str]) -> Result<Vec<TokenizedPrompt>, LoadError> {
        prompts.iter().map(|p| self.encode(p)).collect()
    }

    /// The prompts' ids as a `[prompts, max_length]` int tensor, ready for the text model.
    pub fn input_ids<B: Backend>(
        &self,
        prompts: &[&str],
        device: &B::Device,
    ) -> Result<Tensor<B, 2, Int>, LoadError> {
        let encoded = self.encode_batch(prompts)?;
        let ids: Vec<i64> = encoded
            .iter()
            .flat_map(|e| e.input_ids.iter().map(|&id| id as i64))
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(ids, [prompts.len(), self.max_length]),
            device,
        ))
    }
}

impl Settings {
    fn read(dir: &Path) -> Result<Self, LoadError> {
        let mut s = Settings {
            bos: "<|startoftext|>".into(),
            eos: "<|endoftext|>".into(),
            pad: "<|endoftext|>".into(),
            unk: "<|endoftext|>".into(),
            max_length: CLIP_MAX_LENGTH,
        };
        // tokenizer_config.json first, special_tokens_map.json over it (transformers' order).
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let json: Value = crate::weights::read_json(&path)?;
            let token = |key: &str| match json.get(key) {
                Some(Value::String(t)) => Some(t.clone()),
                // An AddedToken dict: {"content": "...", ...}.
                Some(Value::Object(o)) => {
                    o.get("content").and_then(Value::as_str).map(str::to_string)
                }
                _ => None,
            };
            s.bos = token("bos_token").unwrap_or(s.bos);
            s.eos = token("eos_token").unwrap_or(s.eos);
            s.pad = token("pad_token").unwrap_or(s.pad);
            s.unk = token("unk_token").unwrap_or(s.unk);
            // Some folders say 1e30 ("unlimited"); CLIP still reads 77.
            if let Some(n) = json.get("model_max_length").and_then(Value::as_f64)
                && n >= 2.0
                && n <= 4096.0
            {
                s.max_length = n as usize;
            }
        }
        Ok(s)
    }
}

/// transformers' `CLIPTokenizer` pipeline, built from `vocab.json` + `merges.txt`.
fn bpe_from_vocab_merges(
    vocab: &Path,
    merges: &Path,
    s: &Settings,
) -> Result<Tokenizer, LoadError> {
    let fail = |path: &Path, e: &dyn std::fmt::Display| LoadError::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let to_str = |p: &Path| {
        p.to_str()
            .map(str::to_string)
            .ok_or_else(|| fail(p, &"path is not UTF-8"))
    };
    let bpe = BPE::from_file(&to_str(vocab)?, &to_str(merges)?)
        .unk_token(s.unk.clone())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .fuse_unk(false)
        .build()
        .map_err(|e| fail(merges, &e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let whitespace =
        Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| fail(vocab, &e))?;
    tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
        NFC.into(),
        whitespace.into(),
        Lowercase.into(),
    ])));
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| fail(vocab, &e))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    let specials: Vec<AddedToken> = [&s.bos, &s.eos]
        .into_iter()
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

/// Token ids framed for a text encoder: `[first, body..., last, pad...]`, exactly
/// `max_length` long, the body cut (with a logged warning naming `reader`) when it does not fit.
pub(crate) struct FramedTokens {
    /// The framed, padded ids.
    pub input_ids: Vec<u32>,
    /// Ids before the padding.
    pub num_tokens: usize,
    /// Whether the body was cut.
    pub truncated: bool,
}

/// See [`FramedTokens`]; `[first, last, pad]` are the special ids (CLIP: BOS, EOS, pad; BERT:
/// `[CLS]`, `[SEP]`, `[PAD]`).
pub(crate) fn frame_tokens(
    body: &[u32],
    [first, last, pad]: [u32; 3],
    max_length: usize,
    reader: &str,
    prompt: &str,
) -> FramedTokens {
    let room = max_length - 2;
    let truncated = body.len() > room;
    if truncated {
        log::warn!(
            "prompt is {} tokens, {reader} reads {room}: truncated ({prompt:?})",
            body.len()
        );
    }
    let mut input_ids = Vec::with_capacity(max_length);
    input_ids.push(first);
    input_ids.extend_from_slice(&body[..body.len().min(room)]);
    input_ids.push(last);
    let num_tokens = input_ids.len();
    input_ids.resize(max_length, pad);
    FramedTokens {
        input_ids,
        num_tokens,
        truncated,
    }
}
