import Foundation
import Glibc
import HangarShared
import Testing

@testable import HangarNode

// Real qemu microVMs (TCG here: each boot takes seconds), the real Debian kernel and the guest agent
// that `swift build` puts next to the test binary. Serialized so that only one VM boots at a time.

private let microvm = MicroVMRuntime()

private func vmJob(_ argv: [String], _ configure: (inout Hangar_V1_JobSpec) -> Void = { _ in }) -> Hangar_V1_JobSpec {
    job(argv) {
        $0.runtime = "microvm"
        $0.limits.timeoutMs = 20_000
        $0.limits.memoryBytes = 128 << 20
        configure(&$0)
    }
}

/// Fails the test with the reason when the runtime cannot run here (e.g. qemu is not installed).
private func requireMicroVM() async throws {
    if case .failure(let error) = await microvm.host() {
        Issue.record("the microvm runtime cannot run here: \(error.description)")
        throw error
    }
}

/// qemu processes that are children of this test process.
private func qemuChildren() -> [String] {
    let me = getpid()
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.filter { $0.allSatisfy(\.isNumber) }.filter { pid in
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return stat.contains("(qemu-system-x86") && fields.count > 1 && Int32(fields[1]) == me
    }
}

extension MicroVMSuites {
    @Suite("MicroVM runtime, real qemu", .serialized)
    struct MicroVMRuntimeTests {
        @Test("python3 runs in the guest: SUCCEEDED with 42, and the boot time is reported")
        func python() async throws {
            try await requireMicroVM()
            let outcome = await microvm.run(vmJob(["/usr/bin/python3", "-c", "print(6*7)"]), jobID: "vm-python")
            #expect(outcome.status == .succeeded, "\(outcome.message)")
            #expect(text(outcome.stdout) == "42\n")
            #expect(outcome.startMilliseconds > 0)
            #expect(qemuChildren().isEmpty)
        }

        @Test("exit code, stdin, files and stderr cross the channel")
        func exitCodeStdinFiles() async throws {
            try await requireMicroVM()
            let outcome = await microvm.run(
                vmJob(["/bin/sh", "-c", "cat; cat data.txt >&2; exit 7"]) {
                    $0.stdin = Data("from stdin".utf8)
                    var file = Hangar_V1_FileIn()
                    file.path = "data.txt"
                    file.content = Data("from a file".utf8)
                    $0.files = [file]
                },
                jobID: "vm-exit"
            )
            #expect(outcome.status == .failed, "\(outcome.message)")
            #expect(outcome.exitCode == 7)
            #expect(text(outcome.stdout) == "from stdin")
            #expect(text(outcome.stderr) == "from a file")
        }

        @Test("a program missing from the guest exits 127 with Hangar's message, as in every runtime")
        func missingProgram() async throws {
            try await requireMicroVM()
            let program = "no-such-program-\(uniqueTag())"
            let outcome = await microvm.run(vmJob([program]), jobID: "vm-missing")
            #expect(outcome.status == .failed, "\(outcome.message)")
            #expect(outcome.exitCode == 127)
            #expect(outcome.message == "hangar: command not found in the sandbox: \(program)")
            #expect(text(outcome.stderr) == "hangar: command not found in the sandbox: \(program)\n")
        }

        @Test("the guest has no network device, only lo; the job runs as 65534")
        func noNetwork() async throws {
            try await requireMicroVM()
            let outcome = await microvm.run(vmJob(["/bin/sh", "-c", "ls /sys/class/net; id -u"]), jobID: "vm-net")
            #expect(outcome.status == .succeeded, "\(outcome.message)")
            #expect(text(outcome.stdout) == "lo\n65534\n")
        }

        @Test("wall-clock timeout: TIMED_OUT, and no qemu process is left")
        func timeout() async throws {
            try await requireMicroVM()
            let began = ContinuousClock.now
            let outcome = await microvm.run(
                vmJob(["/bin/sh", "-c", "echo started; sleep 60"]) { $0.limits.timeoutMs = 1500 },
                jobID: "vm-timeout"
            )
            #expect(outcome.status == .timedOut, "\(outcome.message)")
            #expect(outcome.message.contains("1500 ms"))
            #expect(text(outcome.stdout) == "started\n")
            #expect(ContinuousClock.now - began < .seconds(60))
            #expect(qemuChildren().isEmpty)
        }

        @Test("an output flood is cut at the cap: OUTPUT_LIMIT with exactly the cap kept")
        func outputFlood() async throws {
            try await requireMicroVM()
            let outcome = await microvm.run(
                vmJob(["/usr/bin/yes", "flood"]) { $0.limits.outputBytes = 10_000 },
                jobID: "vm-flood"
            )
            #expect(outcome.status == .outputLimit, "\(outcome.message)")
            #expect(outcome.stdout.count == 10_000)
            #expect(outcome.stdoutTruncated)
            #expect(outcome.stdoutBytes > 10_000)
        }

        @Test("a memory bomb is OOM_KILLED by the guest kernel at the job's memory limit")
        func memoryBomb() async throws {
            try await requireMicroVM()
            let outcome = await microvm.run(
                // Grows a MiB at a time: one huge allocation would fail (MemoryError) instead.
                vmJob(["/usr/bin/python3", "-c", "b = []\nwhile True: b.append(b'x' * (1 << 20))"]) {
                    $0.limits.memoryBytes = 64 << 20
                },
                jobID: "vm-oom"
            )
            #expect(outcome.status == .oomKilled, "\(outcome.message) \(text(outcome.stderr))")
            #expect(outcome.peakMemoryBytes <= 64 << 20)
        }

        @Test("nothing stays on the host after a job: no qemu process, no new files in /tmp or /dev/shm")
        func noResidue() async throws {
            try await requireMicroVM()
            let directories = ["/tmp", "/dev/shm", NSTemporaryDirectory()]
            func listing() -> Set<String> {
                Set(
                    directories.flatMap { directory in
                        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).map {
                            directory + "/" + $0
                        }
                    }
                )
            }
            let before = listing()
            let outcome = await microvm.run(
                vmJob(["/bin/sh", "-c", "echo hi > /tmp/x; cat /tmp/x"]),
                jobID: "vm-residue"
            )
            #expect(outcome.status == .succeeded, "\(outcome.message)")
            #expect(text(outcome.stdout) == "hi\n")
            #expect(qemuChildren().isEmpty)
            // Other tests on the machine leave hangar-* folders of their own; a VM's would name qemu or microvm.
            let added = listing().subtracting(before).filter { $0.contains("qemu") || $0.contains("microvm") }
            #expect(added.isEmpty, "left behind: \(added)")
        }

        @Test("a fork bomb is held at the pids limit in the guest and ends at its timeout")
        func forkBomb() async throws {
            try await requireMicroVM()
            // Only shell builtins after the bomb starts (forks fail once it holds every pid): spin a
            // while, report the job cgroup's pids limit and refused forks, then spin until the timeout.
            let script = """
                b() { b | b & }; (b) & i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done
                read m < /sys/fs/cgroup/job/pids.max; read e < /sys/fs/cgroup/job/pids.events
                echo "limit=$m $e"; while :; do :; done
                """
            let outcome = await microvm.run(
                vmJob(["/bin/sh", "-c", script]) {
                    $0.limits.pids = 32
                    $0.limits.timeoutMs = 4000
                },
                jobID: "vm-forkbomb"
            )
            #expect(outcome.status == .timedOut, "\(outcome.message)")
            #expect(outcome.message.contains("4000 ms"))
            let report = text(outcome.stdout).split(separator: " ")
            #expect(report.first == "limit=32", "\(text(outcome.stdout))")
            #expect(
                report.count == 3 && report[1] == "max"
                    && (Int(report[2].trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) > 0
            )
            #expect(qemuChildren().isEmpty)
        }

        @Test("the job cannot talk to the host over the agent's port")
        func portIsRootOnly() async throws {
            try await requireMicroVM()
            let outcome = await microvm.run(
                vmJob(["/bin/sh", "-c", "for p in /dev/vport*; do echo x > $p && echo wrote $p; done; exit 3"]),
                jobID: "vm-port"
            )
            #expect(outcome.status == .failed, "\(outcome.message)")
            #expect(outcome.exitCode == 3)
            #expect(!text(outcome.stdout).contains("wrote"))
            #expect(text(outcome.stderr).contains("Permission denied"), "\(text(outcome.stderr))")
        }

        @Test("the probe says which accelerator and what the guest holds")
        func probe() async throws {
            try await requireMicroVM()
            let probe = await microvm.probe()
            #expect(probe.available, "\(probe.detail)")
            #expect(probe.detail.contains("TCG") || probe.detail.contains("KVM"))
            #expect(probe.detail.contains("boot → agent ready"))
        }
    }
}

@Suite("MicroVM runtime, pure parts")
struct MicroVMPureTests {
    @Test("frames from the guest: unknown types and oversized frames are refused")
    func frameValidation() throws {
        var reader = GuestFrameReader()
        reader.append(GuestProtocol.frame(GuestProtocol.stdout, Data("abc".utf8)))
        let frame = try #require(try reader.next())
        #expect(frame.type == GuestProtocol.stdout && frame.payload == Data("abc".utf8))
        #expect(try reader.next() == nil)

        var bad = GuestFrameReader()
        bad.append([0x5A, 0, 0, 0, 1, 0])
        #expect(throws: GuestFrameReader.Failure.unknownType(0x5A)) { try bad.next() }

        var huge = GuestFrameReader()
        huge.append([GuestProtocol.stdout, 0x7F, 0xFF, 0xFF, 0xFF])
        #expect(throws: GuestFrameReader.Failure.tooLong(type: GuestProtocol.stdout, length: 0x7FFF_FFFF)) {
            try huge.next()
        }
    }

    @Test("a truncated EXIT payload or an unknown kind is refused")
    func exitReport() {
        #expect(GuestExitReport(Data(count: 67)) == nil)
        var unknownKind = Data(count: 68)
        unknownKind[3] = 99
        #expect(GuestExitReport(unknownKind) == nil)
        var oom = Data(count: 68)
        oom[3] = 5
        oom[59] = 2
        oom[67] = 3
        #expect(GuestExitReport(oom)?.kind == .oom && GuestExitReport(oom)?.oomKills == 2)
        #expect(GuestExitReport(oom)?.pidsLimitHits == 3)
    }

    @Test("NETWORK_ALLOWLIST, files_out and unknown templates are rejected with a reason")
    func rejections() {
        var allow = job(["/bin/true"])
        allow.network.mode = .networkAllowlist
        #expect(throws: InvalidJob.self) { try MicroVMJob.frame(allow, limits: JobLimits(allow.limits)) }
        var filesOut = job(["/bin/true"])
        filesOut.filesOut = ["*.txt"]
        #expect(throws: InvalidJob.self) { try MicroVMJob.frame(filesOut, limits: JobLimits(filesOut.limits)) }
        var template = job(["/bin/true"])
        template.template = "debian-bookworm"
        #expect(throws: InvalidJob.self) { try MicroVMJob.frame(template, limits: JobLimits(template.limits)) }
    }

    @Test("the guest image gets libgcc_s, which no ldd line names but glibc dlopens for pthread_exit")
    func libgccShipped() async throws {
        let libraries = try await InitramfsBuilder.sharedLibraries(of: ["/usr/bin/python3"])
        let shipped = libraries + InitramfsBuilder.loadedByLibc(libraries)
        #expect(shipped.filter { $0.hasSuffix("/libgcc_s.so.1") }.count == 1, "\(shipped)")
    }

    @Test("cpio newc: header fields, name padding, trailer")
    func cpio() {
        var archive = CPIOArchive()
        archive.addFile("/init", mode: 0o755, content: Data("x".utf8))
        let bytes = archive.finished()
        let header = String(decoding: bytes.prefix(110), as: UTF8.self)
        #expect(header.hasPrefix("070701"))
        #expect(header.dropFirst(14).prefix(8) == "000081ED")  // regular file, 0755
        #expect(header.dropFirst(54).prefix(8) == "00000001")  // file size
        #expect(String(decoding: bytes.dropFirst(110).prefix(4), as: UTF8.self) == "init")
        #expect(bytes.count % 4 == 0)
        #expect(String(decoding: bytes, as: UTF8.self).contains("TRAILER!!!"))
    }
}
