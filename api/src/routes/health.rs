//! Liveness and readiness: what load balancers and orchestrators ask.

use std::sync::{Arc, atomic::Ordering};

use poem_openapi::{ApiResponse, OpenApi, payload::PlainText};

use crate::{
    AppState,
    error::{ApiError, ProblemCode, Problems},
};

pub struct HealthApi {
    pub state: Arc<AppState>,
}

#[derive(ApiResponse)]
enum Alive {
    /// The process is up.
    #[oai(status = 200)]
    Ok(PlainText<&'static str>),
}

#[derive(ApiResponse)]
enum Ready {
    /// The database answers.
    #[oai(status = 200)]
    Ready(PlainText<&'static str>),
}

crate::routes::problems!(ReadyzProblems = "readyz": [Unavailable]);

/// Liveness and readiness, for load balancers and orchestrators.
#[OpenApi(tag = "crate::routes::ApiTags::Operations")]
impl HealthApi {
    /// Liveness: the process is up
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> Alive {
        Alive::Ok(PlainText("ok"))
    }

    /// Readiness: the database answers
    ///
    /// 503 `unavailable` when it does not (within 2 seconds), and while the process drains for
    /// shutdown.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self) -> Result<Ready, Problems<ReadyzProblems>> {
        if self.state.draining.load(Ordering::Relaxed) {
            return Err(ApiError::new(ProblemCode::Unavailable, "shutting down").into());
        }
        if self.state.db.is_ready().await {
            Ok(Ready::Ready(PlainText("ready")))
        } else {
            Err(ApiError::new(ProblemCode::Unavailable, "the database cannot be reached").into())
        }
    }
}
