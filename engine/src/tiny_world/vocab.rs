//! The Tiny World tokenizer: word level (the world has 25 words), saved as a Hugging Face
//! `tokenizer.json` so the same [`CLIPTokenizer`](crate::models::tokenizer::CLIPTokenizer)
//! that reads CLIP's BPE files reads it.

use std::collections::HashMap;
use std::path::Path;

use serde_json::json;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::replace::{Replace, ReplacePattern};
use tokenizers::normalizers::{Lowercase, Sequence};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{AddedToken, Tokenizer};

use crate::procedural::{Color, Shape};
use crate::weights::LoadError;

/// Start of text (id 0).
pub const BOS: &str = "<|startoftext|>";
/// End of text and padding (id 1; the text tower pools at its first position).
pub const EOS: &str = "<|endoftext|>";
/// Unknown word (id 2).
pub const UNK: &str = "<|unk|>";
/// Context length: the longest caption with a view suffix is 14 tokens framed.
pub const MAX_LENGTH: usize = 16;

/// The vocabulary in id order: special tokens, then the caption and view-suffix words.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = [BOS, EOS, UNK].iter().map(|s| s.to_string()).collect();
    words.extend(["a", "an", "and", "on", "top", "of", ","].map(String::from));
    words.extend(Color::ALL.iter().map(|c| c.name().to_string()));
    words.extend(Shape::ALL.iter().map(|s| s.name().to_string()));
    words.extend(["front", "side", "back", "overhead", "view"].map(String::from));
    words
}

/// The words a caption can use, for messages: `a|an <colour> <shape>`, joined with `and` or
/// `on top of`.
pub fn caption_words() -> String {
    let colours: Vec<&str> = Color::ALL.iter().map(|c| c.name()).collect();
    let shapes: Vec<&str> = Shape::ALL.iter().map(|s| s.name()).collect();
    format!(
        "\"a|an <colour> <shape>\", joined by \"and\" or \"on top of\"; colours {}; shapes {}",
        colours.join(", "),
        shapes.join(", ")
    )
}

/// Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` into `dir`.
pub fn write_tokenizer(dir: &Path) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let vocab: HashMap<String, u32> = vocabulary()
        .into_iter()
        .enumerate()
        .map(|(i, w)| (w, i as u32))
        .collect();
    let path = dir.join("tokenizer.json");
    let fail = |e: &dyn std::fmt::Display| LoadError::Tokenizer {
        path: path.clone(),
        reason: e.to_string(),
    };
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token(UNK.into())
        .build()
        .map_err(|e| fail(&e))?;
    let mut tokenizer = Tokenizer::new(model);
    // "an" is read as "a": the shipped models were trained on captions with "a" before every
    // colour ("a orange cube"), so the "an" embedding is untrained.
    let an_as_a =
        Replace::new(ReplacePattern::Regex(r"\ban\b".into()), "a").map_err(|e| fail(&e))?;
    tokenizer.with_normalizer(Some(Sequence::new(vec![Lowercase.into(), an_as_a.into()])));
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer.add_special_tokens(&[BOS, EOS, UNK].map(|t| AddedToken::from(t, true)));
    tokenizer.save(&path, true).map_err(|e| fail(&e))?;
    let specials =
        json!({ "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": UNK });
    let mut config = specials.clone();
    config["model_max_length"] = json!(MAX_LENGTH);
    config["tokenizer_class"] = json!("PreTrainedTokenizerFast");
    for (name, value) in [
        ("special_tokens_map.json", specials),
        ("tokenizer_config.json", config),
    ] {
        let file = dir.join(name);
        let text = serde_json::to_string_pretty(&value).expect("json values serialise");
        std::fs::write(&file, text).map_err(|e| io(&file, e))?;
    }
    Ok(())
}

fn io(path: &Path, e: std::io::Error) -> LoadError {
    LoadError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::tokenizer::CLIPTokenizer;

    #[test]
    fn written_tokenizer_loads_through_the_clip_loader() {
        let dir = std::env::temp_dir().join(format!("tiny-world-tok-{}", std::process::id()));
        write_tokenizer(&dir).unwrap();
        let tokenizer = CLIPTokenizer::from_folder(&dir).unwrap();
        assert_eq!(tokenizer.max_length(), MAX_LENGTH);
        assert_eq!((tokenizer.bos_token_id(), tokenizer.eos_token_id()), (0, 1));
        assert_eq!(tokenizer.vocab_size(), vocabulary().len());
        let words = vocabulary();
        let id = |w: &str| words.iter().position(|v| v == w).unwrap() as u32;
        let t = tokenizer
            .encode("A red cube on top of a blue torus, back view")
            .unwrap();
        let expect: Vec<u32> = [
            "a", "red", "cube", "on", "top", "of", "a", "blue", "torus", ",", "back", "view",
        ]
        .iter()
        .map(|w| id(w))
        .collect();
        assert_eq!(t.input_ids[0], 0);
        assert_eq!(&t.input_ids[1..13], expect.as_slice());
        assert_eq!(t.input_ids[13..], [1, 1, 1]);
        assert_eq!(t.num_tokens, 14);
        assert!(!t.truncated);
        // "an" is read as the "a" every caption writes; "and" stays "and".
        let plain = tokenizer.encode("An orange cube and a blue cone").unwrap();
        let caption = tokenizer.encode("a orange cube and a blue cone").unwrap();
        assert_eq!(plain.input_ids, caption.input_ids);
        assert_eq!(
            plain.input_ids[1..5],
            [id("a"), id("orange"), id("cube"), id("and")]
        );
        // Unknown words map to the unknown token instead of failing, and are named.
        let t = tokenizer.encode("a penguin").unwrap();
        assert_eq!(t.input_ids[2], id(UNK));
        assert_eq!(
            tokenizer
                .unknown_words("A wooden barrel, a red cube and a wooden CRATE")
                .unwrap(),
            ["wooden", "barrel", "CRATE"]
        );
        assert!(
            tokenizer
                .unknown_words("An orange cube on top of a blue torus, back view")
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
