//! The two WIT versions of `astrid:process/host` over one implementation: each version's
//! types are converted to and from the version-neutral ones, and `ProcessError` maps to each
//! version's `error-code` by one exhaustive match. Version 1.0 has no file injection.

macro_rules! serve_version {
    ($module:ident, $package:ident, |$request:ident| $injections:expr) => {
        mod $module {
            use std::time::Duration;

            #[allow(unused_imports)]
            use crate::host::process::Injection;
            use crate::host::process::{
                Exit, Info, Logs, ProcView, ProcessError, RequestLimits, Sig, SpawnSpec, child,
                info, read_logs, read_since, signal, write_stdin,
            };
            use capsule_wit::astrid::$package::host as wit;
            use wasmtime::component::Resource;

            type Answer<T> = wasmtime::Result<Result<T, wit::ErrorCode>>;

            fn code(e: &ProcessError) -> wit::ErrorCode {
                match e {
                    ProcessError::Denied(_) => wit::ErrorCode::CapabilityDenied,
                    ProcessError::Invalid(_) => wit::ErrorCode::InvalidInput,
                    ProcessError::Escape(_) => wit::ErrorCode::BoundaryEscape,
                    ProcessError::Quota(_) => wit::ErrorCode::Quota,
                    ProcessError::TooLarge(_) => wit::ErrorCode::TooLarge,
                    ProcessError::Closed => wit::ErrorCode::Closed,
                    ProcessError::Cancelled => wit::ErrorCode::Cancelled,
                    ProcessError::WaitTimeout => wit::ErrorCode::WaitTimeout,
                    ProcessError::NoSuchProcess => wit::ErrorCode::NoSuchProcess,
                    ProcessError::RegistryFull => wit::ErrorCode::RegistryFull,
                    ProcessError::Start(_)
                    | ProcessError::Unenforceable(_)
                    | ProcessError::Refused(_)
                    | ProcessError::Unsupported(_) => wit::ErrorCode::Unknown(e.to_string()),
                }
            }

            fn answer<T, U>(r: Result<T, ProcessError>, f: impl FnOnce(T) -> U) -> Answer<U> {
                Ok(r.map(f).map_err(|e| code(&e)))
            }

            fn exit(e: Exit) -> wit::ExitInfo {
                wit::ExitInfo {
                    exit_code: e.code,
                    signal: e.signal,
                }
            }

            fn logs(l: Logs) -> wit::ReadLogsResult {
                wit::ReadLogsResult {
                    stdout: l.stdout,
                    stderr: l.stderr,
                    running: l.running,
                    exit: l.exit.map(exit),
                }
            }

            fn process_info(i: Info) -> wit::ProcessInfo {
                wit::ProcessInfo {
                    id: i.id,
                    label: i.label,
                    command: i.command,
                    os_pid: i.pid,
                    phase: if i.running {
                        wit::ProcessPhase::Running
                    } else {
                        wit::ProcessPhase::Exited
                    },
                    exit: i.exit.map(exit),
                    age_ms: i.age_ms,
                    idle_ms: i.idle_ms,
                    buffered_bytes: i.buffered,
                    bytes_dropped: i.dropped,
                    stdin_open: i.stdin_open,
                    cpu_ms: i.cpu_ms,
                    mem_bytes_peak: i.peak_bytes,
                }
            }

            fn sig(s: wit::ProcessSignal) -> Sig {
                match s {
                    wit::ProcessSignal::Term => Sig::Term,
                    wit::ProcessSignal::Hup => Sig::Hup,
                    wit::ProcessSignal::Usr1 => Sig::Usr1,
                    wit::ProcessSignal::Usr2 => Sig::Usr2,
                    wit::ProcessSignal::Int => Sig::Int,
                    wit::ProcessSignal::Stop => Sig::Stop,
                    wit::ProcessSignal::Cont => Sig::Cont,
                }
            }

            #[allow(unused_mut)]
            fn spec(mut $request: wit::SpawnRequest) -> SpawnSpec {
                let injections = $injections;
                let limits = $request.limits.map_or(
                    RequestLimits {
                        memory: None,
                        cpu: None,
                        pids: None,
                        files: None,
                    },
                    |l| RequestLimits {
                        memory: l.max_memory_bytes,
                        cpu: l.max_cpu_secs,
                        pids: l.max_pids,
                        files: l.max_open_files,
                    },
                );
                SpawnSpec {
                    cmd: $request.cmd,
                    args: $request.args,
                    stdin: $request.stdin,
                    env: $request.env.into_iter().map(|v| (v.key, v.value)).collect(),
                    cwd: $request.cwd,
                    limits,
                    label: $request.label,
                    keep_stdin_open: $request.keep_stdin_open.unwrap_or(false),
                    overflow: $request.overflow.map(|o| match o {
                        wit::OverflowPolicy::DropOldest => child::Overflow::DropOldest,
                        wit::OverflowPolicy::Backpressure => child::Overflow::Backpressure,
                    }),
                    ring_bytes: $request.log_ring_bytes,
                    lifetime_ms: $request.max_lifetime_ms,
                    idle_ms: $request.idle_timeout_ms,
                    retention_ms: $request.exit_retention_ms,
                    injections,
                }
            }

            impl wit::HostProcessHandle for ProcView<'_> {
                async fn read_logs(
                    &mut self,
                    handle: Resource<wit::ProcessHandle>,
                ) -> Answer<wit::ReadLogsResult> {
                    answer(self.handle_proc(handle.rep())?, |p| logs(read_logs(&p)))
                }

                async fn write_stdin(
                    &mut self,
                    handle: Resource<wit::ProcessHandle>,
                    data: Vec<u8>,
                ) -> Answer<u32> {
                    let r = self
                        .handle_proc(handle.rep())?
                        .and_then(|p| write_stdin(&p, &data));
                    answer(r, |n| n)
                }

                async fn close_stdin(
                    &mut self,
                    handle: Resource<wit::ProcessHandle>,
                ) -> Answer<()> {
                    let r = self
                        .handle_proc(handle.rep())?
                        .and_then(|p| p.close_stdin());
                    answer(r, |()| ())
                }

                async fn signal(
                    &mut self,
                    handle: Resource<wit::ProcessHandle>,
                    s: wit::ProcessSignal,
                ) -> Answer<()> {
                    answer(self.handle_proc(handle.rep())?, |p| signal(&p, sig(s)))
                }

                async fn kill(
                    &mut self,
                    handle: Resource<wit::ProcessHandle>,
                ) -> Answer<wit::KillResult> {
                    let p = match self.handle_proc(handle.rep())? {
                        Ok(p) => p,
                        Err(e) => return Ok(Err(code(&e))),
                    };
                    answer(self.kill_proc(&p).await?, |k| wit::KillResult {
                        killed: k.killed,
                        exit: k.exit.map(exit),
                        stdout: k.stdout,
                        stderr: k.stderr,
                    })
                }

                async fn wait(
                    &mut self,
                    handle: Resource<wit::ProcessHandle>,
                    timeout_ms: Option<u64>,
                ) -> Answer<wit::ExitInfo> {
                    let p = match self.handle_proc(handle.rep())? {
                        Ok(p) => p,
                        Err(e) => return Ok(Err(code(&e))),
                    };
                    let r = self
                        .wait_exit(&p, timeout_ms.map(Duration::from_millis))
                        .await?;
                    answer(r, exit)
                }

                async fn wait_with_output(
                    &mut self,
                    handle: Resource<wit::ProcessHandle>,
                    timeout_ms: Option<u64>,
                ) -> Answer<wit::ProcessResult> {
                    let p = match self.handle_proc(handle.rep())? {
                        Ok(p) => p,
                        Err(e) => return Ok(Err(code(&e))),
                    };
                    let r = self
                        .wait_exit(&p, timeout_ms.map(Duration::from_millis))
                        .await?;
                    answer(r, |e| {
                        let l = read_logs(&p);
                        wit::ProcessResult {
                            stdout: l.stdout,
                            stderr: l.stderr,
                            exit: exit(e),
                        }
                    })
                }

                async fn os_pid(&mut self, handle: Resource<wit::ProcessHandle>) -> Answer<u32> {
                    answer(self.handle_proc(handle.rep())?, |p| p.pid)
                }

                async fn subscribe_exit(
                    &mut self,
                    handle: Resource<wit::ProcessHandle>,
                ) -> wasmtime::Result<Resource<wit::Pollable>> {
                    let p = self.pollable_proc(handle.rep())?;
                    Ok(Resource::new_own(self.new_pollable(p, false)?))
                }

                async fn subscribe_logs(
                    &mut self,
                    handle: Resource<wit::ProcessHandle>,
                ) -> wasmtime::Result<Resource<wit::Pollable>> {
                    let p = self.pollable_proc(handle.rep())?;
                    Ok(Resource::new_own(self.new_pollable(p, true)?))
                }

                async fn drop(
                    &mut self,
                    handle: Resource<wit::ProcessHandle>,
                ) -> wasmtime::Result<()> {
                    self.drop_handle(handle.rep())
                }
            }

            impl wit::Host for ProcView<'_> {
                async fn spawn(
                    &mut self,
                    request: wit::SpawnRequest,
                ) -> Answer<wit::ProcessResult> {
                    answer(
                        self.run_to_end(spec(request)).await?,
                        |(stdout, stderr, e)| wit::ProcessResult {
                            stdout,
                            stderr,
                            exit: exit(e),
                        },
                    )
                }

                async fn spawn_background(
                    &mut self,
                    request: wit::SpawnRequest,
                ) -> Answer<Resource<wit::ProcessHandle>> {
                    answer(
                        self.start_background(spec(request)).await?,
                        Resource::new_own,
                    )
                }

                async fn spawn_persistent(&mut self, request: wit::SpawnRequest) -> Answer<String> {
                    answer(self.start_persistent(spec(request)).await?, |id| id)
                }

                async fn attach(&mut self, id: String) -> Answer<Resource<wit::ProcessHandle>> {
                    answer(self.attach_id(&id)?, Resource::new_own)
                }

                async fn list_processes(
                    &mut self,
                    label_filter: Option<String>,
                ) -> Answer<Vec<wit::ProcessInfo>> {
                    let list = self.list_procs(label_filter.as_deref());
                    Ok(Ok(list.into_iter().map(process_info).collect()))
                }

                async fn status(&mut self, id: String) -> Answer<wit::ProcessInfo> {
                    answer(self.find_id(&id), |p| process_info(info(&p)))
                }

                async fn status_many(&mut self, ids: Vec<String>) -> Answer<Vec<wit::ProcessInfo>> {
                    if ids.len() > super::super::MAX_PERSISTENT_RECORDS {
                        return Ok(Err(wit::ErrorCode::TooLarge));
                    }
                    let r: Result<Vec<_>, _> = ids
                        .iter()
                        .map(|id| self.find_id(id).map(|p| process_info(info(&p))))
                        .collect();
                    answer(r, |v| v)
                }

                async fn read_logs(&mut self, id: String) -> Answer<wit::ReadLogsResult> {
                    answer(self.find_id(&id), |p| logs(read_logs(&p)))
                }

                async fn read_since(
                    &mut self,
                    id: String,
                    which_stream: wit::LogStream,
                    cursor: wit::LogCursor,
                    max_bytes: u32,
                ) -> Answer<wit::LogChunk> {
                    let stderr = matches!(which_stream, wit::LogStream::Stderr);
                    let r = self
                        .find_id(&id)
                        .and_then(|p| read_since(&p, stderr, cursor.token.as_deref(), max_bytes));
                    answer(r, |(chunk, next)| wit::LogChunk {
                        data: chunk.data,
                        next: wit::LogCursor { token: Some(next) },
                        bytes_dropped: chunk.lost,
                        drained_eof: chunk.eof,
                    })
                }

                async fn write_stdin(&mut self, id: String, data: Vec<u8>) -> Answer<u32> {
                    answer(
                        self.find_id(&id).and_then(|p| write_stdin(&p, &data)),
                        |n| n,
                    )
                }

                async fn close_stdin(&mut self, id: String) -> Answer<()> {
                    answer(self.find_id(&id).and_then(|p| p.close_stdin()), |()| ())
                }

                async fn signal(&mut self, id: String, s: wit::ProcessSignal) -> Answer<()> {
                    answer(self.find_id(&id), |p| signal(&p, sig(s)))
                }

                async fn wait(&mut self, id: String, timeout_ms: u64) -> Answer<wit::ExitInfo> {
                    let p = match self.find_id(&id) {
                        Ok(p) => p,
                        Err(e) => return Ok(Err(code(&e))),
                    };
                    let r = self
                        .wait_exit(&p, Some(Duration::from_millis(timeout_ms)))
                        .await?;
                    answer(r, exit)
                }

                async fn stop(
                    &mut self,
                    id: String,
                    grace_ms: Option<u64>,
                ) -> Answer<wit::ExitInfo> {
                    let p = match self.find_id(&id) {
                        Ok(p) => p,
                        Err(e) => return Ok(Err(code(&e))),
                    };
                    answer(self.stop_proc(&p, grace_ms).await?, exit)
                }

                async fn release_process(&mut self, id: String) -> Answer<()> {
                    answer(self.release_id(&id), |()| ())
                }

                async fn watch(&mut self, id: String, _suffix: Option<String>) -> Answer<()> {
                    let r = self.find_id(&id).and_then(|_| {
                        Err(ProcessError::Unsupported(
                            "watching processes is not supported by this host; use pollables",
                        ))
                    });
                    answer(r, |()| ())
                }

                async fn unwatch(&mut self, id: String) -> Answer<()> {
                    let r = self.find_id(&id).and_then(|_| {
                        Err(ProcessError::Unsupported(
                            "watching processes is not supported by this host; use pollables",
                        ))
                    });
                    answer(r, |()| ())
                }
            }
        }
    };
}

serve_version!(v1_0, process1_0_0, |request| {
    let _ = &request;
    Vec::new()
});
serve_version!(v1_1, process1_1_0, |request| {
    std::mem::take(&mut request.file_injections)
        .into_iter()
        .map(|f| match f.placement {
            wit::InjectionPlacement::EnvPointer(var) => Injection::Env(var, f.content),
            wit::InjectionPlacement::FixedPath(name) => Injection::Fixed(name, f.content),
        })
        .collect::<Vec<Injection>>()
});
