// swift-tools-version:6.0
import Foundation
import PackageDescription

// A sanitizer build (scripts/check-leaks sets HANGAR_SANITIZER_BUILD=1) leaves out the microVM guest
// agent: it is a static C executable, and the sanitizer runtimes cannot be linked statically.
let sanitizerBuild = ProcessInfo.processInfo.environment["HANGAR_SANITIZER_BUILD"] == "1"

let package = Package(
    name: "Hangar",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "hangar", targets: ["hangar"]),
        .library(name: "HangarClient", targets: ["HangarClient"]),
    ]
        + (sanitizerBuild
            ? []
            : [
                .executable(name: "hangar-guest-agent", targets: ["hangar-guest-agent"]),
                .executable(name: "hangar-sandbox-agent", targets: ["hangar-sandbox-agent"]),
            ]),
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swiftwasm/WasmKit", from: "0.4.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CNATS",
            path: "Sources/CNATS",
            pkgConfig: "libnats",
            providers: [.apt(["libnats-dev"])]
        ),
        .target(
            name: "HangarNATS",
            dependencies: [
                "CNATS",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HeapModule", package: "swift-collections"),
            ],
            path: "Sources/NATS"
        ),
        .target(
            name: "HangarShared",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                "HangarNATS",
            ],
            path: "Sources/Shared"
        ),
        .target(
            name: "HangarScheduler",
            dependencies: [
                "HangarNATS",
                "HangarShared",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Scheduler"
        ),
        .target(name: "CMountAPI", path: "Sources/CMountAPI"),
        .target(
            name: "HangarNode",
            dependencies: [
                "CMountAPI",
                "HangarNATS",
                "HangarShared",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Node"
        ),
        .executableTarget(
            name: "hangar",
            dependencies: [
                "HangarClient",
                "HangarNATS",
                "HangarShared",
                "HangarScheduler",
                "HangarNode",
                "HangarGateway",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "FlyingFox", package: "FlyingFox"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/hangar"
        ),
        // The wasm runtime's engine: one WASI module per process, run by the node inside a sandbox.
        .executableTarget(
            name: "hangar-wasm-worker",
            dependencies: [
                .product(name: "WasmKit", package: "WasmKit"),
                .product(name: "WasmKitWASI", package: "WasmKit"),
                .product(name: "WASI", package: "WasmKit"),
            ],
            path: "Sources/WasmWorker",
            // The Swift runtime linked in: the sandbox has the host's /usr, not the toolchain's libraries.
            linkerSettings: [.unsafeFlags(["-static-stdlib"])]
        ),
        .executableTarget(
            name: "hangar-bench",
            dependencies: [
                "HangarNATS", "HangarShared", "HangarScheduler", "HangarNode",
                // TestPeer: the fault test's hosts (network namespaces) on a cluster.
                "HangarTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Bench"
        ),
        // The Swift client library: stateful sandboxes and the code interpreter (Sources/Client).
        // The E2B-compatible HTTP gateway (`hangar gateway`): one more client of the cluster over NATS.
        .target(
            name: "HangarGateway",
            dependencies: [
                "HangarClient", "HangarNATS", "HangarShared",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Sources/Gateway"
        ),
        .target(
            name: "HangarClient",
            dependencies: [
                "HangarNATS",
                "HangarShared",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Sources/Client"
        ),
        .target(
            name: "HangarTestSupport",
            dependencies: ["HangarNATS", "HangarShared"],
            path: "Tests/Support"
        ),
        .testTarget(
            name: "HangarNATSTests",
            dependencies: ["HangarNATS", "HangarTestSupport"],
            path: "Tests/NATSTests"
        ),
        .testTarget(
            name: "HangarSchedulerTests",
            dependencies: [
                "HangarScheduler", "HangarShared",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Tests/SchedulerTests"
        ),
        .testTarget(
            name: "HangarNodeTests",
            dependencies: [
                "HangarNode", "HangarShared", "HangarTestSupport", .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/NodeTests"
        ),
        .testTarget(
            name: "HangarCLITests",
            dependencies: [
                "HangarTestSupport", "HangarShared", "HangarScheduler",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Tests/CLITests"
        ),
        .target(
            name: "HangarClusterTestSupport",
            dependencies: [
                "HangarScheduler", "HangarNode", "HangarNATS", "HangarShared", "HangarTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Tests/ClusterSupport"
        ),
        .testTarget(
            name: "HangarIntegrationTests",
            dependencies: [
                "HangarScheduler", "HangarNode", "HangarNATS", "HangarShared", "HangarTestSupport",
                "HangarClusterTestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Tests/IntegrationTests"
        ),
        .testTarget(
            name: "HangarGatewayTests",
            dependencies: [
                "HangarGateway", "HangarClient", "HangarScheduler", "HangarNode", "HangarNATS", "HangarShared",
                "HangarTestSupport", "HangarClusterTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Tests/GatewayTests"
        ),
        .testTarget(
            name: "HangarClientTests",
            dependencies: [
                "HangarClient", "HangarScheduler", "HangarNode", "HangarNATS", "HangarShared", "HangarTestSupport",
                "HangarClusterTestSupport", .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Tests/ClientTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)

if !sanitizerBuild {
    // /init of the microvm runtime's guests: C, linked statically (see Sources/GuestAgent/main.c).
    package.targets.append(
        .executableTarget(
            name: "hangar-guest-agent",
            path: "Sources/GuestAgent",
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.unsafeFlags(["-static-executable"])]
        )
    )
    // The first process of every stateful sandbox (Sources/SandboxAgent/main.c): C, with the
    // protobuf-c runtime linked statically.
    package.targets.append(
        .executableTarget(
            name: "hangar-sandbox-agent",
            path: "Sources/SandboxAgent",
            cSettings: [.unsafeFlags(["-O2"]), .headerSearchPath("proto")],
            linkerSettings: [.linkedLibrary("protobuf-c"), .unsafeFlags(["-static-executable"])]
        )
    )
}
