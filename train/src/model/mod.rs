//! The ALBEF model in tch: one file per module (ViT, BERT, the pretraining model), the
//! losses, and weight loading/saving in the official checkpoint layout.
pub mod albef;
pub mod bert;
pub mod layers;
pub mod losses;
pub mod probe;
pub mod vit;
pub mod weights;

pub use albef::Albef;
pub use layers::Precision;
pub use losses::{Batch, Losses, MlmInputs, Negatives};
