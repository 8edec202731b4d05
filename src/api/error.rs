//! The one place where domain errors become HTTP errors: each error's
//! status and code (the envelope itself is `server/error.rs`'s `ApiError`).

use http::StatusCode;

use crate::api::proxy::ProxyError;
use crate::fs::path::PathError;
use crate::fs::{FsError, Kind};
use crate::isolate::IsolateError;
use crate::kernel::KernelError;
use crate::process::pty::PtyError;
use crate::process::{ProcessError, SessionError};
use crate::server::ApiError;

impl From<crate::runtime::InitError> for ApiError {
    fn from(e: crate::runtime::InitError) -> Self {
        use crate::runtime::InitError;
        match e {
            InitError::Invalid(m) => ApiError::invalid_body(m),
            InitError::AlreadyInitialized { .. } => {
                ApiError::new(StatusCode::CONFLICT, "ALREADY_INITIALIZED", e.to_string())
            }
            InitError::RebindUnauthorized => {
                ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", e.to_string())
            }
        }
    }
}

impl From<crate::operations::OpError> for ApiError {
    fn from(e: crate::operations::OpError) -> Self {
        use crate::operations::OpError;
        let (status, code) = match e {
            OpError::InvalidId => (StatusCode::BAD_REQUEST, "INVALID_OPERATION_ID"),
            OpError::Conflict(_) => (StatusCode::CONFLICT, "OPERATION_CONFLICT"),
            OpError::Expired(_) => (StatusCode::GONE, "OPERATION_EXPIRED"),
            OpError::NotFound(_) => (StatusCode::NOT_FOUND, "OPERATION_NOT_FOUND"),
            OpError::Full(_) => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_OPERATIONS"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<crate::fs::watch::WatchError> for ApiError {
    fn from(e: crate::fs::watch::WatchError) -> Self {
        use crate::fs::watch::{ErrorKind, WatchError};
        let (status, code) = match e.kind() {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "FILE_NOT_FOUND"),
            ErrorKind::Denied | ErrorKind::Escapes => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            ErrorKind::NotADirectory => (StatusCode::BAD_REQUEST, "NOT_A_DIRECTORY"),
            ErrorKind::TooMany => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_WATCHES"),
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY"),
            ErrorKind::Other => match e {
                WatchError::Fs(e) => return e.into(),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR"),
            },
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<IsolateError> for ApiError {
    fn from(e: IsolateError) -> Self {
        let e = match e {
            IsolateError::Process(p) => return p.into(),
            e => e,
        };
        let (status, code) = match &e {
            IsolateError::NotFound(_) => (StatusCode::NOT_FOUND, "SESSION_NOT_FOUND"),
            IsolateError::RunNotFound(..) => (StatusCode::NOT_FOUND, "RUN_NOT_FOUND"),
            // Upstream's code for allowlist, profile and path errors (sic).
            IsolateError::Invalid(_) => (StatusCode::BAD_REQUEST, "RUNTIME_ERROR"),
            IsolateError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE")
            }
            IsolateError::NotSupported(_) => (StatusCode::SERVICE_UNAVAILABLE, "NOT_SUPPORTED"),
            IsolateError::Inactive(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY"),
            IsolateError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_SESSIONS"),
            IsolateError::Busy(..) => (StatusCode::CONFLICT, "SESSION_BUSY"),
            IsolateError::Process(_) | IsolateError::Io(_) | IsolateError::NotEnded(..) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<ProcessError> for ApiError {
    fn from(e: ProcessError) -> Self {
        let (status, code) = match e {
            ProcessError::NotFound(_) => (StatusCode::NOT_FOUND, "COMMAND_NOT_FOUND"),
            ProcessError::NotRunning(_) => (StatusCode::CONFLICT, "COMMAND_NOT_RUNNING"),
            ProcessError::NoStdin(_) => (StatusCode::CONFLICT, "STDIN_NOT_OPEN"),
            ProcessError::StdinClosed(_) => (StatusCode::CONFLICT, "STDIN_CLOSED"),
            ProcessError::StdinWrite { .. } => (StatusCode::CONFLICT, "STDIN_WRITE_FAILED"),
            ProcessError::TooManyRunning(_) => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_RUNNING"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let (status, code) = match e {
            SessionError::NotFound(_) => (StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND"),
            SessionError::Busy(_) => (StatusCode::CONFLICT, "SESSION_BUSY"),
            SessionError::NoBash => (StatusCode::NOT_IMPLEMENTED, "NOT_SUPPORTED"),
            SessionError::Cwd { .. } => (StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY"),
            SessionError::State(_) => (StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR"),
            SessionError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_SESSIONS"),
            SessionError::TooManyRunning(_) => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_RUNNING"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        Self::invalid_body(e.to_string())
    }
}

impl From<FsError> for ApiError {
    fn from(e: FsError) -> Self {
        let (status, code) = match e.kind() {
            Kind::NotFound => (StatusCode::NOT_FOUND, "FILE_NOT_FOUND"),
            Kind::Denied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            Kind::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "INSUFFICIENT_STORAGE"),
            Kind::InvalidFile => (StatusCode::BAD_REQUEST, "INVALID_FILE"),
            Kind::Exists => (StatusCode::CONFLICT, "FILE_EXISTS"),
            Kind::BadRequest => (StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY"),
            Kind::BadContent => (StatusCode::BAD_REQUEST, "INVALID_FILE_CONTENT"),
            Kind::Other => (StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        let (status, code) = match e {
            ProxyError::MissingPort | ProxyError::InvalidPort(_) | ProxyError::SelfLoop(_) => {
                (StatusCode::BAD_REQUEST, "INVALID_PORT")
            }
            ProxyError::Looped => (StatusCode::LOOP_DETECTED, "LOOP_DETECTED"),
            ProxyError::InvalidTarget(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY"),
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::UnaskedUpgrade { .. }
            | ProxyError::Upstream { .. } => (StatusCode::BAD_GATEWAY, "BAD_GATEWAY"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<PtyError> for ApiError {
    fn from(e: PtyError) -> Self {
        let (status, code) = match &e {
            PtyError::NotFound(_) => (StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND"),
            PtyError::AlreadyConnected(_) => (StatusCode::CONFLICT, "ALREADY_CONNECTED"),
            PtyError::TooMany => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_SESSIONS"),
            PtyError::BadSize { .. } => (StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY"),
            // A cwd that cannot be made is the request's fault, unless the
            // disk is full or the system fails.
            PtyError::Cwd { source, .. } => match source.raw_os_error() {
                Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
                    (StatusCode::FORBIDDEN, "PERMISSION_DENIED")
                }
                Some(libc::ENOSPC | libc::EDQUOT) => {
                    (StatusCode::INSUFFICIENT_STORAGE, "INSUFFICIENT_STORAGE")
                }
                Some(libc::EIO | libc::ENOMEM | libc::EMFILE | libc::ENFILE) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR")
                }
                _ => (StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY"),
            },
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<KernelError> for ApiError {
    fn from(e: KernelError) -> Self {
        let (status, code) = match &e {
            KernelError::NotFound(_) => (StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND"),
            KernelError::Busy(_) => (StatusCode::CONFLICT, "CONTEXT_BUSY"),
            KernelError::Dead(..) => (StatusCode::CONFLICT, "CONTEXT_DEAD"),
            KernelError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_CONTEXTS"),
            KernelError::NoKernel { .. } => (StatusCode::BAD_REQUEST, "NOT_SUPPORTED"),
            KernelError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN"),
            KernelError::Launch(..) => (StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR"),
        };
        Self::new(status, code, e.to_string())
    }
}
