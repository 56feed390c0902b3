//! Response bodies: to the caller's type, or to the remote error they carry.

use serde::de::DeserializeOwned;

use super::connection::{ErrorBody, RawResponse};
use crate::error::{ErrorCode, VspError};

/// The body of a service method's typed error.
#[derive(serde::Deserialize)]
struct ServiceErrorBody<E> {
    data: E,
}

/// The typed error of a `handler` error response from a `#[vsp::service]` method, if it has one.
pub(super) fn service_error<E: DeserializeOwned>(response: &RawResponse) -> Option<E> {
    serde_json::from_slice::<ServiceErrorBody<E>>(response.body())
        .ok()
        .map(|body| body.data)
}

/// The remote error a response with an `error_code` carries.
pub(super) fn remote_error(
    service: &str,
    endpoint: &str,
    code: &ErrorCode,
    response: &RawResponse,
) -> VspError {
    let body = response.body();
    let message = serde_json::from_slice::<ErrorBody<'_>>(body)
        .map(|body| body.error.into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    VspError::Remote {
        service: service.to_owned(),
        endpoint: endpoint.to_owned(),
        code: code.clone(),
        message,
    }
}

/// Turns a response into the caller's type or the remote error it carries.
pub(super) fn decode<R: DeserializeOwned>(
    service: &str,
    endpoint: &str,
    response: &RawResponse,
) -> Result<R, VspError> {
    let body = response.body();
    if let Some(code) = &response.error_code {
        return Err(remote_error(service, endpoint, code, response));
    }
    if !response.from_vsp_peer {
        // Velithon marks errors only by an `error` key in the body.
        if let Ok(error) = serde_json::from_slice::<ErrorBody<'_>>(body) {
            return Err(VspError::Remote {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
                code: ErrorCode::Unspecified(String::new()),
                message: error.error.into_owned(),
            });
        }
    }
    serde_json::from_slice(body).map_err(|source| VspError::Decode {
        service: service.to_owned(),
        endpoint: endpoint.to_owned(),
        source,
    })
}
