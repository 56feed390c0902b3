//! The gateway's error answers: a status per VSP error, and a JSON body naming what went wrong
//! (and, for a bad argument, which field).

use super::*;
use crate::client::TypedError;
use crate::error::{client_error_status, DEFAULT_SERVICE_ERROR_STATUS};

/// An error answer: a status and `{"error": {"code", "message", "field"?, "data"?}}`.
#[derive(Debug)]
pub(super) struct GatewayError {
    pub(super) status: StatusCode,
    pub(super) code: Cow<'static, str>,
    pub(super) message: String,
    /// The argument a `bad_request` is about.
    pub(super) field: Option<String>,
    /// A typed service error's JSON.
    pub(super) data: Option<Box<RawValue>>,
    pub(super) retry_after: bool,
    /// For `GET /{service}`: the instances, even when the service does not describe itself.
    pub(super) instances: Option<Box<Value>>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<&'a Value>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

impl GatewayError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            code: Cow::Borrowed(code),
            message: message.into(),
            field: None,
            data: None,
            retry_after: false,
            instances: None,
        }
    }

    /// The HTTP status of a VSP failure (the module's table). Unless `internals`, a failure of
    /// the gateway's own (no instance, a connection that failed) is described without the
    /// addresses and states it names, which go to the log instead.
    pub(super) fn from_vsp(err: &VspError, typed: Option<TypedError>, internals: bool) -> Self {
        let unavailable = (StatusCode::SERVICE_UNAVAILABLE, true);
        let bad_gateway = (StatusCode::BAD_GATEWAY, false);
        let (code, message) = match err {
            VspError::Remote { code, message, .. } => (code.clone(), message.clone()),
            other => {
                let message = if internals {
                    other.to_string()
                } else {
                    tracing::warn!("gateway: {other}");
                    caller_message(other)
                };
                (
                    ErrorCode::Unspecified(other.error_type().to_owned()),
                    message,
                )
            }
        };
        let ((status, retry_after), code_text) = match (&code, err) {
            (ErrorCode::NotFound, _) => ((StatusCode::NOT_FOUND, false), "not_found"),
            (ErrorCode::BadRequest, _) => ((StatusCode::BAD_REQUEST, false), "bad_request"),
            (ErrorCode::Unauthenticated, _) => {
                ((StatusCode::UNAUTHORIZED, false), "unauthenticated")
            }
            (ErrorCode::PermissionDenied, _) => {
                ((StatusCode::FORBIDDEN, false), "permission_denied")
            }
            (ErrorCode::Overloaded, _) => (unavailable, "overloaded"),
            (ErrorCode::ShuttingDown, _) => (unavailable, "shutting_down"),
            (ErrorCode::Timeout, _) => ((StatusCode::GATEWAY_TIMEOUT, false), "timeout"),
            // The service's typed error: the caller's outcome, with the status it declared.
            (ErrorCode::Handler, _) if typed.is_some() => {
                let status = typed
                    .as_ref()
                    .and_then(|typed| typed.http_status)
                    .and_then(client_error_status)
                    .unwrap_or(DEFAULT_SERVICE_ERROR_STATUS);
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
                ((status, false), "service_error")
            }
            (ErrorCode::Handler, _) => ((StatusCode::INTERNAL_SERVER_ERROR, false), "handler"),
            // A streaming endpoint: the gateway answers once, so it cannot call it.
            (ErrorCode::NotSupported, _) => ((StatusCode::NOT_IMPLEMENTED, false), "not_supported"),
            (ErrorCode::TooLarge, _) => (bad_gateway, "too_large"),
            (ErrorCode::Protocol, _) => (bad_gateway, "protocol"),
            // Velithon says an unknown endpoint only in words.
            (ErrorCode::Unspecified(_), VspError::Remote { message, .. })
                if message.starts_with("Endpoint ") && message.ends_with(" not found") =>
            {
                ((StatusCode::NOT_FOUND, false), "not_found")
            }
            (ErrorCode::Unspecified(_), VspError::Remote { .. }) => {
                ((StatusCode::INTERNAL_SERVER_ERROR, false), "handler")
            }
            (_, VspError::NoInstances { .. } | VspError::NoHealthyInstances { .. })
            | (_, VspError::TooManyInFlight { .. }) => (unavailable, err.error_type()),
            (_, VspError::Timeout { .. }) => ((StatusCode::GATEWAY_TIMEOUT, false), "timeout"),
            (
                _,
                VspError::Connect { .. }
                | VspError::ConnectTimeout { .. }
                | VspError::ConnectionClosed { .. }
                | VspError::Decode { .. }
                | VspError::Protocol(_),
            ) => (bad_gateway, err.error_type()),
            (_, VspError::RequestTooLarge { .. }) => {
                ((StatusCode::PAYLOAD_TOO_LARGE, false), "too_large")
            }
            _ => ((StatusCode::INTERNAL_SERVER_ERROR, false), err.error_type()),
        };
        let field = (code == ErrorCode::BadRequest)
            .then(|| field_of(&message))
            .flatten();
        GatewayError {
            status,
            code: Cow::Owned(code_text.to_owned()),
            message,
            field,
            data: typed.map(|typed| typed.data),
            retry_after,
            instances: None,
        }
    }
}

/// What a caller outside learns of a failure of the gateway's own: what went wrong, in the
/// service's and endpoint's words, never an instance's address or state.
fn caller_message(err: &VspError) -> String {
    match err {
        VspError::NoInstances { service } => format!("no instance of `{service}` is known"),
        VspError::NoHealthyInstances { service, .. } => {
            format!("no instance of `{service}` is available now")
        }
        VspError::Connect { service, .. } | VspError::ConnectTimeout { service, .. } => {
            format!("`{service}` could not be reached")
        }
        VspError::ConnectionClosed {
            service, endpoint, ..
        } => format!("the connection to `{service}` closed during `{endpoint}`"),
        VspError::Timeout {
            service,
            endpoint,
            after,
        } => format!("`{service}.{endpoint}` did not answer within {after:?}"),
        VspError::Decode {
            service, endpoint, ..
        } => format!("the answer of `{service}.{endpoint}` could not be read"),
        VspError::Protocol(_) => "the service's answer broke the protocol".to_owned(),
        VspError::TooManyInFlight { .. } => "the gateway has too many calls in flight".to_owned(),
        other => other.to_string(),
    }
}

/// The field a `bad_request` message names: ``field `x`: ...`` or ``missing field `x` ``.
fn field_of(message: &str) -> Option<String> {
    let start = message
        .find("missing field `")
        .map(|at| at + "missing field `".len())
        .or_else(|| message.find("field `").map(|at| at + "field `".len()))?;
    let rest = &message[start..];
    rest.find('`').map(|end| rest[..end].to_owned())
}

impl GatewayError {
    fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorFields {
                code: &self.code,
                message: &self.message,
                field: self.field.as_deref(),
                data: self.data.as_deref(),
            },
            instances: self.instances.as_deref(),
        }
    }

    /// The error's JSON body, as text (a stream's `error` event).
    pub(super) fn to_json(&self) -> String {
        serde_json::to_string(&self.body()).unwrap_or_else(|_| "null".to_owned())
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = json_response(self.status, &self.body());
        if self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}

pub(super) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "null".to_owned());
    raw_json_response(status, text)
}

pub(super) fn raw_json_response(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_of_a_bad_request_is_found_in_either_wording() {
        assert_eq!(
            field_of("invalid arguments for `get_user`: field `user_id`: invalid type").as_deref(),
            Some("user_id")
        );
        assert_eq!(
            field_of("invalid arguments for `get_user`: missing field `user_id` at line 1")
                .as_deref(),
            Some("user_id")
        );
        assert_eq!(field_of("the body must be a JSON object"), None);
    }
}
