//! OpenAPI tags.

use poem_openapi::Tags;

/// Groups of endpoints in the docs.
#[derive(Tags)]
pub enum ApiTags {
    /// The data root: browsing it (admins) and the datasets users may train on.
    #[oai(rename = "Data")]
    Data,
    /// Managing users and their credit tokens (admins).
    #[oai(rename = "Users")]
    Users,
    /// Logging in and out.
    #[oai(rename = "Session")]
    Session,
    /// Your own API tokens.
    #[oai(rename = "API tokens")]
    Tokens,
    /// Cluster tokens, nodes and their drivers (admins).
    #[oai(rename = "Cluster")]
    Cluster,
    /// Training jobs and the models they make.
    #[oai(rename = "Training")]
    Training,
    /// Classifying images with trained models on the nodes' analysis workers.
    #[oai(rename = "Analysis")]
    Analysis,
}
