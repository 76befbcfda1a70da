//! The ALBEF model in tch: one file per module (ViT, BERT, the pretraining model), the
//! losses, the builder every caller goes through, and weight loading/saving in the official
//! checkpoint layout.
pub mod albef;
pub mod bert;
pub mod builder;
pub mod layers;
pub mod losses;
pub mod probe;
pub mod vit;
pub mod weights;

pub use albef::Albef;
pub use builder::{build, PrecisionRule};
pub use layers::Precision;
pub use losses::{Batch, Losses, MlmInputs, Negatives};
