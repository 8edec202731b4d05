// Generated once by tonic-prost-build 0.14.9 (with protox 0.9.1) from the
// sandboxd process.proto (package process.v1): the client module only; the
// messages are the library's (execd::grpc::process_v1).
/// Generated client implementations.
pub mod process_service_client {
    #![allow(
        unused_variables,
        dead_code,
        missing_docs,
        clippy::wildcard_imports,
        clippy::let_unit_value,
    )]
    use tonic::codegen::*;
    use tonic::codegen::http::Uri;
    /// ProcessService manages process execution, lifecycle, signals, and interactive terminals (PTY).
    #[derive(Debug, Clone)]
    pub struct ProcessServiceClient<T> {
        inner: tonic::client::Grpc<T>,
    }
    impl ProcessServiceClient<tonic::transport::Channel> {
        /// Attempt to create a new client by connecting to a given endpoint.
        pub async fn connect<D>(dst: D) -> Result<Self, tonic::transport::Error>
        where
            D: TryInto<tonic::transport::Endpoint>,
            D::Error: Into<StdError>,
        {
            let conn = tonic::transport::Endpoint::new(dst)?.connect().await?;
            Ok(Self::new(conn))
        }
    }
    impl<T> ProcessServiceClient<T>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<StdError>,
        T::ResponseBody: Body<Data = Bytes> + std::marker::Send + 'static,
        <T::ResponseBody as Body>::Error: Into<StdError> + std::marker::Send,
    {
        pub fn new(inner: T) -> Self {
            let inner = tonic::client::Grpc::new(inner);
            Self { inner }
        }
        pub fn with_origin(inner: T, origin: Uri) -> Self {
            let inner = tonic::client::Grpc::with_origin(inner, origin);
            Self { inner }
        }
        pub fn with_interceptor<F>(
            inner: T,
            interceptor: F,
        ) -> ProcessServiceClient<InterceptedService<T, F>>
        where
            F: tonic::service::Interceptor,
            T::ResponseBody: Default,
            T: tonic::codegen::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<
                    <T as tonic::client::GrpcService<tonic::body::Body>>::ResponseBody,
                >,
            >,
            <T as tonic::codegen::Service<
                http::Request<tonic::body::Body>,
            >>::Error: Into<StdError> + std::marker::Send + std::marker::Sync,
        {
            ProcessServiceClient::new(InterceptedService::new(inner, interceptor))
        }
        /// Compress requests with the given encoding.
        ///
        /// This requires the server to support it otherwise it might respond with an
        /// error.
        #[must_use]
        pub fn send_compressed(mut self, encoding: CompressionEncoding) -> Self {
            self.inner = self.inner.send_compressed(encoding);
            self
        }
        /// Enable decompressing responses.
        #[must_use]
        pub fn accept_compressed(mut self, encoding: CompressionEncoding) -> Self {
            self.inner = self.inner.accept_compressed(encoding);
            self
        }
        /// Limits the maximum size of a decoded message.
        ///
        /// Default: `4MB`
        #[must_use]
        pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
            self.inner = self.inner.max_decoding_message_size(limit);
            self
        }
        /// Limits the maximum size of an encoded message.
        ///
        /// Default: `usize::MAX`
        #[must_use]
        pub fn max_encoding_message_size(mut self, limit: usize) -> Self {
            self.inner = self.inner.max_encoding_message_size(limit);
            self
        }
        /// Start runs a command and streams its stdout/stderr events in real time.
        /// Use for long-running or interactive processes (shells, servers, interactive commands).
        /// The stream remains open until the process terminates and sends an ExitEvent.
        pub async fn start(
            &mut self,
            request: impl tonic::IntoRequest<super::StartRequest>,
        ) -> std::result::Result<
            tonic::Response<tonic::codec::Streaming<super::StartResponse>>,
            tonic::Status,
        > {
            self.inner
                .ready()
                .await
                .map_err(|e| {
                    tonic::Status::unknown(
                        format!("Service was not ready: {}", e.into()),
                    )
                })?;
            let codec = tonic_prost::ProstCodec::default();
            let path = http::uri::PathAndQuery::from_static(
                "/process.v1.ProcessService/Start",
            );
            let mut req = request.into_request();
            req.extensions_mut()
                .insert(GrpcMethod::new("process.v1.ProcessService", "Start"));
            self.inner.server_streaming(req, path, codec).await
        }
        /// Execute runs a short-lived command synchronously to completion and returns stdout,
        /// stderr, and the exit code atomically. Use when real-time streaming is not required.
        pub async fn execute(
            &mut self,
            request: impl tonic::IntoRequest<super::ExecuteRequest>,
        ) -> std::result::Result<
            tonic::Response<super::ExecuteResponse>,
            tonic::Status,
        > {
            self.inner
                .ready()
                .await
                .map_err(|e| {
                    tonic::Status::unknown(
                        format!("Service was not ready: {}", e.into()),
                    )
                })?;
            let codec = tonic_prost::ProstCodec::default();
            let path = http::uri::PathAndQuery::from_static(
                "/process.v1.ProcessService/Execute",
            );
            let mut req = request.into_request();
            req.extensions_mut()
                .insert(GrpcMethod::new("process.v1.ProcessService", "Execute"));
            self.inner.unary(req, path, codec).await
        }
        /// WriteStdin sends standard input bytes or EOF to an active running process.
        /// Note: Any stdout/stderr produced by the process in response to this input
        /// flows continuously through the active Start stream rather than WriteStdinResponse.
        pub async fn write_stdin(
            &mut self,
            request: impl tonic::IntoRequest<super::WriteStdinRequest>,
        ) -> std::result::Result<
            tonic::Response<super::WriteStdinResponse>,
            tonic::Status,
        > {
            self.inner
                .ready()
                .await
                .map_err(|e| {
                    tonic::Status::unknown(
                        format!("Service was not ready: {}", e.into()),
                    )
                })?;
            let codec = tonic_prost::ProstCodec::default();
            let path = http::uri::PathAndQuery::from_static(
                "/process.v1.ProcessService/WriteStdin",
            );
            let mut req = request.into_request();
            req.extensions_mut()
                .insert(GrpcMethod::new("process.v1.ProcessService", "WriteStdin"));
            self.inner.unary(req, path, codec).await
        }
        /// SendSignal delivers a POSIX signal to a running process group.
        /// Errors (e.g., process not found or permission denied) are surfaced via standard
        /// gRPC status codes (NOT_FOUND, PERMISSION_DENIED).
        pub async fn send_signal(
            &mut self,
            request: impl tonic::IntoRequest<super::SendSignalRequest>,
        ) -> std::result::Result<
            tonic::Response<super::SendSignalResponse>,
            tonic::Status,
        > {
            self.inner
                .ready()
                .await
                .map_err(|e| {
                    tonic::Status::unknown(
                        format!("Service was not ready: {}", e.into()),
                    )
                })?;
            let codec = tonic_prost::ProstCodec::default();
            let path = http::uri::PathAndQuery::from_static(
                "/process.v1.ProcessService/SendSignal",
            );
            let mut req = request.into_request();
            req.extensions_mut()
                .insert(GrpcMethod::new("process.v1.ProcessService", "SendSignal"));
            self.inner.unary(req, path, codec).await
        }
        /// ResizeTTY dynamically resizes the pseudo-terminal window of a running process.
        pub async fn resize_tty(
            &mut self,
            request: impl tonic::IntoRequest<super::ResizeTtyRequest>,
        ) -> std::result::Result<
            tonic::Response<super::ResizeTtyResponse>,
            tonic::Status,
        > {
            self.inner
                .ready()
                .await
                .map_err(|e| {
                    tonic::Status::unknown(
                        format!("Service was not ready: {}", e.into()),
                    )
                })?;
            let codec = tonic_prost::ProstCodec::default();
            let path = http::uri::PathAndQuery::from_static(
                "/process.v1.ProcessService/ResizeTTY",
            );
            let mut req = request.into_request();
            req.extensions_mut()
                .insert(GrpcMethod::new("process.v1.ProcessService", "ResizeTTY"));
            self.inner.unary(req, path, codec).await
        }
    }
}
