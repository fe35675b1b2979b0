# termgate: one static binary (`termgate agent`, `termgate webhook`) on an
# empty base, run as user 65532, for linux/amd64 and linux/arm64.
#
# `make image` builds the same thing without a container engine or network
# (test/imagebuild): one OCI image index holding both platforms, written to
# bin/termgate-image.tar. With a builder for both platforms,
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=v1.2.3 --build-arg REVISION=$(git rev-parse HEAD) .
#
# gives the same index: the build stage runs on the builder's own platform
# and cross-compiles (no emulation), the final stage only copies the binary.
# TestDockerfileMatchesRecipe (test/e2e/realnode) fails when this file and
# the archive disagree on the build flags, the binary's path, the user, the
# entrypoint, the platforms or the OCI label keys.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY agent/ agent/
COPY webhook/ webhook/
COPY certs/ certs/
COPY nodemark/ nodemark/
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags "-s -w" -o /out/termgate ./cmd/termgate

FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.source=https://github.com/termgate/termgate \
      org.opencontainers.image.title=termgate \
      org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.revision=$REVISION
COPY --from=build /out/termgate /termgate
USER 65532:65532
ENTRYPOINT ["/termgate"]
