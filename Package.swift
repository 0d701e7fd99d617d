// swift-tools-version: 6.0
import PackageDescription

// Targets by job: a pure core (no C, no sockets), one thin wrapper per C library,
// the worker that wires them, and a thin executable. See README "Code layout".
let package = Package(
    name: "cache-invalidator",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cache-invalidator", targets: ["cache-invalidator"]),
        .library(name: "CacheInvalidator", targets: ["CacheInvalidator"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // The status endpoint's event loop and sockets (NIOCore, NIOPosix; not NIOHTTP1: the
        // endpoint's own strict parser decides every answer). See StatusServer.swift.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // TLS to Redis (rediss://): hiredis 0.14 has none, so RedisClient owns the socket.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // glibc's <malloc.h>: mallopt at start-up and a periodic malloc_trim (see Run.swift).
        .systemLibrary(name: "CMalloc"),
        .target(
            name: "InvalidationCore",
            dependencies: [.product(name: "Histogram", package: "hdrhistogram-swift")]
        ),
        .target(name: "PostgresClient", dependencies: ["CLibPQ"]),
        .target(name: "RedisClient", dependencies: ["CHiredis", "COpenSSL", "InvalidationCore"]),
        .target(
            name: "CacheInvalidator",
            dependencies: [
                "InvalidationCore", "PostgresClient", "RedisClient",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "cache-invalidator",
            dependencies: [
                "CacheInvalidator", "CMalloc",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "InvalidationCoreTests", dependencies: ["InvalidationCore"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "CacheInvalidator", "InvalidationCore", "PostgresClient", "RedisClient",
                "cache-invalidator",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ]
)
