//! Text data: tokenizer, document loaders, calibration sampling, the pinned evaluation text.
pub mod build;
pub mod calib;
pub mod eval_text;
pub mod pyrandom;
pub mod textfile;
pub mod tokenizer;
