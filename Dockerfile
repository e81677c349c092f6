# syntax=docker/dockerfile:1
# One image for the operator and the runtime: /manager (the TradingStack operator, the
# entrypoint) and /tradingd (the trading API, run by the operator's Deployments and Jobs).
# IMG is the name this image is pushed under; it becomes the operator's default runtime image
# (api/v1alpha1.DefaultRuntimeImage), so an operator always runs runtimes of its own build.
#   docker build --build-arg IMG=ghcr.io/findmy/trading-operator:v1.0.0 --build-arg VERSION=v1.0.0 \
#     -t ghcr.io/findmy/trading-operator:v1.0.0 .      (or: make docker-build IMG=...)

FROM golang:1.26 AS builder
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
ARG IMG=ghcr.io/findmy/trading-operator:dev
WORKDIR /src

# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download

COPY api/ api/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY runtime/ runtime/

ENV CGO_ENABLED=0
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    set -eu; \
    ldflags="-s -w \
      -X github.com/findmy/trading-operator/runtime.Version=${VERSION} \
      -X github.com/findmy/trading-operator/api/v1alpha1.DefaultRuntimeImage=${IMG}"; \
    GOOS=${TARGETOS} GOARCH=${TARGETARCH:-$(go env GOARCH)} go build -trimpath -ldflags "$ldflags" -o /out/manager ./cmd/manager; \
    GOOS=${TARGETOS} GOARCH=${TARGETARCH:-$(go env GOARCH)} go build -trimpath -ldflags "$ldflags" -o /out/tradingd ./cmd/tradingd

# distroless static: no shell, no package manager; nonroot is uid 65532, which the operator's
# pod security contexts expect.
FROM gcr.io/distroless/static:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.source="https://github.com/findmy/trading-operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="TradingStack operator (/manager) and trading API (/tradingd)"
COPY --from=builder /out/manager /manager
COPY --from=builder /out/tradingd /tradingd
USER 65532:65532
ENTRYPOINT ["/manager"]
