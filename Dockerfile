# termgate: one static binary (`termgate agent`, `termgate webhook`) on a
# distroless, non-root base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY agent/ agent/
COPY webhook/ webhook/
COPY certs/ certs/
COPY nodemark/ nodemark/
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/termgate ./cmd/termgate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/termgate /termgate
USER 65532:65532
ENTRYPOINT ["/termgate"]
