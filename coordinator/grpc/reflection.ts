// gRPC server reflection (grpc.reflection.v1 and v1alpha), so grpcurl, Postman and other
// operators' tools list and call Shoal's services without a copy of the proto files.
//
// It describes only the public API (shoal.v1.BatchService, shoal.v1.FleetService and
// grpc.health.v1.Health): the internal coordinator–worker messages (wire.proto) are left out.
// The schema it serves is the committed proto/ tree, read once at start; it is the same schema
// the API's clients are generated from, so exposing it tells nobody anything new, and it is on
// for every coordinator without a switch.

import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { Server } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";

export const REFLECTED_SERVICES = ["shoal.v1.BatchService", "shoal.v1.FleetService", "grpc.health.v1.Health"] as const;

/** proto/ at the checkout's root: two levels up from coordinator/grpc in the source tree, three from dist/. */
function protoRoot(): string {
  for (const up of ["../../proto", "../../../proto"]) {
    const dir = fileURLToPath(new URL(up, import.meta.url));
    if (existsSync(`${dir}/shoal/v1/shoal.proto`)) return dir;
  }
  throw new Error("gRPC reflection: proto/shoal/v1/shoal.proto not found beside the installed code");
}

/** Adds the reflection services to `server`. Throws (at start, never later) when the protos cannot be read. */
export function addReflection(server: Pick<Server, "addService">): void {
  const root = protoRoot();
  // Field names as written in the .proto files (keepCase): reflection must describe the wire
  // schema, not proto-loader's camelCase JavaScript view of it.
  const definition = loadSync(["shoal/v1/shoal.proto", "grpc/health/v1/health.proto"], {
    includeDirs: [root],
    keepCase: true,
  });
  new ReflectionService(definition, { services: [...REFLECTED_SERVICES] }).addToServer(server);
}
