// A real OpenID Provider (oidc-provider) on loopback for tests/it/remote_keys_oidc.rs.
//
//   node provider.mjs --port 0 --key-dir DIR --kids signing[,other...]
//
// Listens on 127.0.0.1 (port 0: any free one) with issuer http://127.0.0.1:<port>, and prints
// `listening <issuer>` once it serves. Its signing keys are RSA keys named by --kids, kept as
// private JWKs in --key-dir (made on first use, so a restart with the same names serves the same
// keys): the first signs, all are published in its JWKS. Restarting it with other names on the
// same port is how a test rotates the provider's keys.
//
// One client, `portcullis-tests`, may use the client-credentials grant; its access tokens are
// JWTs (RFC 9068, `typ: at+jwt`) for the resource `urn:portcullis:api`, audience
// `portcullis-tests`, with the scopes asked for out of `documents.read documents.write`.
import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Provider from 'oidc-provider';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const port = Number(arg('port', '0'));
const keyDir = arg('key-dir', '.');
const kids = arg('kids', 'key-1').split(',');

function privateJwk(kid) {
  const file = join(keyDir, `${kid}.jwk.json`);
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8'));
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  writeFileSync(file, JSON.stringify(jwk), { mode: 0o600 });
  return jwk;
}

export const CLIENT_ID = 'portcullis-tests';
export const CLIENT_SECRET = 'a-test-client-secret-long-enough-for-hs256-0123456789';

const server = createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
      },
    ],
    jwks: { keys: kids.map(privateJwk) },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:portcullis:api',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'documents.read documents.write',
          audience: 'portcullis-tests',
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
  });
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});

// The test stops it with SIGTERM; close at once rather than drain keep-alive connections.
process.on('SIGTERM', () => process.exit(0));
