;; A capsule in the component text format, small enough to read: its interceptor
;; (`astrid-hook-trigger`) publishes the payload it was called with on `echo.out`
;; through `astrid:ipc/host.publish` and answers `final`.
(component
  ;; The one host function it uses, typed exactly as `astrid:ipc/host@1.0.0` declares it.
  (import "astrid:ipc/host@1.0.0" (instance $ipc
    (type $code (variant
      (case "capability-denied") (case "invalid-input") (case "closed")
      (case "rate-limited") (case "backpressure") (case "quota") (case "timeout")
      (case "unknown" string)))
    (export "error-code" (type $error-code (eq $code)))
    (export "publish" (func
      (param "topic" string) (param "payload" string)
      (result (result (error $error-code)))))))
  (alias export $ipc "publish" (func $publish))

  ;; Memory and a bump allocator the host writes call arguments through; the handler
  ;; empties the heap when it returns, so memory never grows across calls.
  (core module $Heap
    (memory (export "memory") 1)
    (global (export "top") (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at
        (i32.and
          (i32.add (global.get 0) (i32.sub (local.get 2) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get 2))))
      (global.set 0 (i32.add (local.get $at) (local.get 3)))
      (if (i32.gt_u (global.get 0) (i32.const 65536)) (then unreachable))
      (local.get $at)))
  (core instance $heap (instantiate $Heap))
  (alias core export $heap "memory" (core memory $memory))
  (alias core export $heap "realloc" (core func $realloc))
  (core func $publish-lowered (canon lower (func $publish) (memory $memory) (realloc $realloc)))

  (core module $Echo
    (import "heap" "memory" (memory 1))
    (import "heap" "top" (global $top (mut i32)))
    (import "ipc" "publish" (func $publish (param i32 i32 i32 i32 i32)))
    (data (i32.const 16) "echo.out")
    (data (i32.const 32) "final")
    ;; (action, payload) -> pointer to capsule-result { action: string, data: option<string> }
    (func (export "hook") (param i32 i32 i32 i32) (result i32)
      ;; The publish result lands at 64; a refusal is the host's to log, the answer stays `final`.
      (call $publish (i32.const 16) (i32.const 8) (local.get 2) (local.get 3) (i32.const 64))
      (i32.store (i32.const 48) (i32.const 32))
      (i32.store (i32.const 52) (i32.const 5))
      (i32.store8 (i32.const 56) (i32.const 0))
      (global.set $top (i32.const 1024))
      (i32.const 48)))
  (core instance $echo (instantiate $Echo
    (with "heap" (instance $heap))
    (with "ipc" (instance (export "publish" (func $publish-lowered))))))

  (type $result (record (field "action" string) (field "data" (option string))))
  (export $capsule-result "capsule-result" (type $result))
  (func $hook (param "action" string) (param "payload" (list u8)) (result $capsule-result)
    (canon lift (core func $echo "hook") (memory $memory) (realloc $realloc)))
  (export "astrid-hook-trigger" (func $hook)))
