//! What Tiny World can show and how it is said: one object, two side by side ("and"), or one
//! on top of another ("on top of"), captioned from fixed templates, with a seeded held-out set
//! of compositions the prior never trains on.

use std::fmt;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::procedural::{Color, Shape};

/// One coloured primitive, as a caption names it ("a red cube").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Item {
    /// The shape.
    pub shape: Shape,
    /// Its colour.
    pub color: Color,
}

impl Item {
    /// All 40 items, colour-major (the order captions are listed in).
    pub fn all() -> Vec<Item> {
        Color::ALL
            .iter()
            .flat_map(|&color| Shape::ALL.iter().map(move |&shape| Item { shape, color }))
            .collect()
    }

    fn index(self) -> usize {
        let c = Color::ALL
            .iter()
            .position(|&c| c == self.color)
            .expect("known");
        let s = Shape::ALL
            .iter()
            .position(|&s| s == self.shape)
            .expect("known");
        c * Shape::ALL.len() + s
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let color = self.color.name();
        // English's article; the tokenizer reads "an" as "a", the one the shipped models
        // were trained with, so both spellings condition alike.
        let article = if color.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        write!(f, "{article} {color} {}", self.shape.name())
    }
}

/// A scene of the world, as its caption describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Composition {
    /// One object.
    Single(Item),
    /// Two objects side by side; the first named stands on the left seen from the front.
    And(Item, Item),
    /// The first object stacked on the second.
    OnTopOf(Item, Item),
}

impl Composition {
    /// Every caption of the world: 40 singles, 1560 ordered "and" pairs, 1560 stacks (two
    /// different items each). "a and b" and "b and a" are both listed (people write either);
    /// they are the same composition up to the viewpoint, see [`Self::canonical`].
    pub fn all() -> Vec<Composition> {
        let items = Item::all();
        let mut all: Vec<Composition> = items.iter().map(|&i| Composition::Single(i)).collect();
        for &a in &items {
            for &b in &items {
                if a != b {
                    all.push(Composition::And(a, b));
                }
            }
        }
        for &a in &items {
            for &b in &items {
                if a != b {
                    all.push(Composition::OnTopOf(a, b));
                }
            }
        }
        all
    }

    /// The caption ("a yellow torus on top of a blue cube").
    pub fn caption(&self) -> String {
        self.to_string()
    }

    /// The composition with "and" pairs in item order: two compositions that look the same
    /// from some viewpoint have the same canonical form (what retrieval scores compare).
    pub fn canonical(&self) -> Composition {
        match *self {
            Composition::And(a, b) if b.index() < a.index() => Composition::And(b, a),
            other => other,
        }
    }

    /// Whether this is a two-object composition.
    pub fn is_pair(&self) -> bool {
        !matches!(self, Composition::Single(_))
    }

    /// The same two shapes and colours bound the other way round ("a red cube and a blue
    /// sphere" -> "a blue cube and a red sphere"): the confusion a CLIP that sees colours and
    /// shapes but not which goes with which makes. `None` for one object, and for pairs whose
    /// items share a colour or a shape (swapping changes nothing then).
    pub fn binding_swap(&self) -> Option<Composition> {
        let (a, b) = match *self {
            Composition::Single(_) => return None,
            Composition::And(a, b) | Composition::OnTopOf(a, b) => (a, b),
        };
        if a.color == b.color || a.shape == b.shape {
            return None;
        }
        let (a2, b2) = colours_swapped(a, b);
        Some(match self {
            Composition::And(..) => Composition::And(a2, b2),
            _ => Composition::OnTopOf(a2, b2),
        })
    }

    /// Parse a caption of the templates (case and extra spaces ignored; a trailing view
    /// suffix such as ", front view" is dropped). `None` when the text is not a world caption.
    pub fn parse(text: &str) -> Option<Composition> {
        let text = text.to_lowercase();
        let text = text.split(',').next().unwrap_or("");
        let words: Vec<&str> = text.split_whitespace().collect();
        let item = |w: &[&str]| -> Option<Item> {
            match w {
                ["a" | "an", color, shape] => Some(Item {
                    color: *Color::ALL.iter().find(|c| c.name() == *color)?,
                    shape: *Shape::ALL.iter().find(|s| s.name() == *shape)?,
                }),
                _ => None,
            }
        };
        match words.len() {
            3 => item(&words).map(Composition::Single),
            7 if words[3] == "and" => {
                Some(Composition::And(item(&words[..3])?, item(&words[4..])?))
            }
            9 if words[3..6] == ["on", "top", "of"] => {
                Some(Composition::OnTopOf(item(&words[..3])?, item(&words[6..])?))
            }
            _ => None,
        }
    }
}

/// `a` and `b` with their colours exchanged, shapes kept.
pub(crate) fn colours_swapped(a: Item, b: Item) -> (Item, Item) {
    (
        Item {
            color: b.color,
            ..a
        },
        Item {
            color: a.color,
            ..b
        },
    )
}

impl fmt::Display for Composition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Composition::Single(a) => write!(f, "{a}"),
            Composition::And(a, b) => write!(f, "{a} and {b}"),
            Composition::OnTopOf(a, b) => write!(f, "{a} on top of {b}"),
        }
    }
}

/// Share of the two-object compositions the shipped models never saw.
pub const SHIPPED_HELD_OUT_FRACTION: f32 = 0.1;
/// Seed of the shipped models' held-out choice.
pub const SHIPPED_SPLIT_SEED: u64 = 2503;

/// Which captions the prior trains on and which it never sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Captions the prior and the reward are trained on.
    pub train: Vec<Composition>,
    /// Two-object captions held out from the prior's training (both orders of an "and" pair).
    pub held_out: Vec<Composition>,
}

impl Split {
    /// Hold out `fraction` of the two-object compositions, chosen by `seed`. Singles are
    /// always trained on: held-out captions are new combinations of known parts.
    pub fn new(fraction: f32, seed: u64) -> Split {
        let mut canonical: Vec<Composition> = Composition::all()
            .into_iter()
            .filter(|c| c.is_pair() && c.canonical() == *c)
            .collect();
        canonical.shuffle(&mut StdRng::seed_from_u64(seed));
        let count = (fraction.clamp(0.0, 1.0) * canonical.len() as f32).round() as usize;
        let held: std::collections::HashSet<Composition> =
            canonical.into_iter().take(count).collect();
        let (held_out, train) = Composition::all()
            .into_iter()
            .partition(|c| held.contains(&c.canonical()));
        Split { train, held_out }
    }

    /// The split the shipped models were trained with (the recipe presets'), which the
    /// benchmark and the judge's reports name captions "seen" or "held-out" by.
    pub fn shipped() -> Split {
        Split::new(SHIPPED_HELD_OUT_FRACTION, SHIPPED_SPLIT_SEED)
    }

    /// Whether `composition` (or its mirror) is held out.
    pub fn is_held_out(&self, composition: &Composition) -> bool {
        let c = composition.canonical();
        self.held_out.iter().any(|h| h.canonical() == c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_round_trip_and_count() {
        let all = Composition::all();
        assert_eq!(all.len(), 40 + 2 * 40 * 39);
        for c in &all {
            assert_eq!(Composition::parse(&c.caption()), Some(*c), "{c}");
        }
        let orange = Composition::parse("a orange cone and a red cube").unwrap();
        assert_eq!(orange.caption(), "an orange cone and a red cube");
        assert_eq!(
            Composition::parse("A Yellow torus  on top of a blue cube, front view"),
            Some(Composition::OnTopOf(
                Item {
                    shape: Shape::Torus,
                    color: Color::Yellow
                },
                Item {
                    shape: Shape::Cube,
                    color: Color::Blue
                },
            ))
        );
        assert_eq!(Composition::parse("a penguin"), None);
        assert_eq!(Composition::parse("a red cube beside a blue sphere"), None);
    }

    #[test]
    fn and_is_symmetric_on_top_of_is_not() {
        let red_cube = Item {
            shape: Shape::Cube,
            color: Color::Red,
        };
        let blue_sphere = Item {
            shape: Shape::Sphere,
            color: Color::Blue,
        };
        assert_eq!(
            Composition::And(red_cube, blue_sphere).canonical(),
            Composition::And(blue_sphere, red_cube).canonical()
        );
        assert_ne!(
            Composition::OnTopOf(red_cube, blue_sphere).canonical(),
            Composition::OnTopOf(blue_sphere, red_cube).canonical()
        );
    }

    #[test]
    fn binding_swaps_exchange_colours_and_are_their_own_inverse() {
        let readme = Composition::parse("a red cube and a blue sphere").unwrap();
        assert_eq!(
            readme.binding_swap(),
            Composition::parse("a blue cube and a red sphere")
        );
        let stack = Composition::parse("a red cone on top of a blue cube").unwrap();
        assert_eq!(
            stack.binding_swap(),
            Composition::parse("a blue cone on top of a red cube")
        );
        for text in [
            "a red cube",
            "a red cube and a red sphere",
            "a red cube and a blue cube",
        ] {
            assert_eq!(
                Composition::parse(text).unwrap().binding_swap(),
                None,
                "{text}"
            );
        }
        let mut swappable = 0;
        for c in Composition::all() {
            if let Some(s) = c.binding_swap() {
                swappable += 1;
                assert_ne!(s.canonical(), c.canonical(), "{c}");
                assert_eq!(s.binding_swap(), Some(c));
            }
        }
        // Pairs of two different colours and two different shapes: 40 * 28 ordered, two kinds.
        assert_eq!(swappable, 2 * 40 * 28);
    }

    #[test]
    fn split_is_seeded_disjoint_and_keeps_mirrors_together() {
        let split = Split::new(0.1, 7);
        assert_eq!(split, Split::new(0.1, 7));
        assert_ne!(split.held_out, Split::new(0.1, 8).held_out);
        assert_eq!(
            split.train.len() + split.held_out.len(),
            Composition::all().len()
        );
        assert!(split.held_out.iter().all(|c| c.is_pair()));
        for c in &split.train {
            assert!(!split.is_held_out(c), "{c}");
        }
        let ands = split
            .held_out
            .iter()
            .filter(|c| matches!(c, Composition::And(..)))
            .count();
        assert_eq!(ands % 2, 0, "both orders of a held-out pair are held out");
        // 10% of the 780 + 1560 distinct pair compositions.
        let distinct: std::collections::HashSet<_> =
            split.held_out.iter().map(|c| c.canonical()).collect();
        assert_eq!(distinct.len(), 234);
    }

    #[test]
    fn shipped_split_holds_out_what_the_docs_call_held_out() {
        // docs/benchmarks.md labels its prompts by this split; a change here relabels them.
        let split = Split::shipped();
        let label = |text: &str| split.is_held_out(&Composition::parse(text).unwrap());
        assert!(label("a red cube and a blue cone"));
        assert!(label("a black torus and a green torus"));
        assert!(!label("a red cube and a blue sphere"));
        assert!(!label("a yellow cone on top of a purple cube"));
        assert_eq!(split, Split::new(0.1, 2503));
    }
}
