import Testing

/// The integration suites that run real sandboxes on every runtime (gVisor on ptrace, a microVM
/// under TCG): one at a time, so that together they do not starve the timing-sensitive suites that
/// run beside them on a 2-core machine.
@Suite(.serialized)
enum HeavySandboxSuites {}
