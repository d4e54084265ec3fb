;; A guest of capsule-wit's front-page example, in the component text format: it imports
;; `astrid:approval/host@1.0.0` typed exactly as the WIT declares it, and its export `ask`
;; requests approval to `read` `notes.txt` and returns the decision's case number (255 when
;; the host answered with an error code).
(component
  (import "astrid:approval/host@1.0.0" (instance $approval
    (type $code (variant
      (case "invalid-input") (case "timeout") (case "store-unavailable")
      (case "unknown" string)))
    (export "error-code" (type $error-code (eq $code)))
    (type $req (record (field "action" string) (field "target-resource" string)))
    (export "approval-request" (type $approval-request (eq $req)))
    (type $dec (enum "denied" "approved" "approved-session" "approved-always" "allowance"))
    (export "approval-decision" (type $approval-decision (eq $dec)))
    (type $resp (record (field "decision" $approval-decision)))
    (export "approval-response" (type $approval-response (eq $resp)))
    (export "request-approval" (func
      (param "request" $approval-request)
      (result (result $approval-response (error $error-code)))))))
  (alias export $approval "request-approval" (func $request-approval))

  ;; Memory and a bump allocator for the host to write an error code's text through.
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
  (core func $request-lowered
    (canon lower (func $request-approval) (memory $memory) (realloc $realloc)))

  (core module $Ask
    (import "heap" "memory" (memory 1))
    (import "heap" "top" (global $top (mut i32)))
    (import "approval" "request" (func $request (param i32 i32 i32 i32 i32)))
    (data (i32.const 16) "read")
    (data (i32.const 32) "notes.txt")
    (func (export "ask") (result i32)
      (global.set $top (i32.const 1024))
      ;; The result lands at 64: its case byte, then the response (one enum byte) at 68.
      (call $request (i32.const 16) (i32.const 4) (i32.const 32) (i32.const 9) (i32.const 64))
      (if (result i32) (i32.eqz (i32.load8_u (i32.const 64)))
        (then (i32.load8_u (i32.const 68)))
        (else (i32.const 255)))))
  (core instance $ask (instantiate $Ask
    (with "heap" (instance $heap))
    (with "approval" (instance (export "request" (func $request-lowered))))))

  (func $ask-lifted (result u8) (canon lift (core func $ask "ask")))
  (export "ask" (func $ask-lifted)))
