//! milebatch (skeleton; filled in by the pipeline issue).
