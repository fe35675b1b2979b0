# termgate: one static binary (`termgate agent`, `termgate webhook`) on an
# empty base, run as user 65532. `make image` builds the same image without a
# container engine (test/imagebuild, an OCI archive at bin/termgate-image.tar);
# TestDockerfileMatchesRecipe (test/e2e/realnode) fails when the two disagree
# on the build flags, the binary's path, the user or the entrypoint.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY agent/ agent/
COPY webhook/ webhook/
COPY certs/ certs/
COPY nodemark/ nodemark/
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/termgate ./cmd/termgate

FROM scratch
COPY --from=build /out/termgate /termgate
USER 65532:65532
ENTRYPOINT ["/termgate"]
