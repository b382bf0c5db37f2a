<?php
// Send a push notification to a 1C user through pns4ones (or the original
// PNS4OneS) with nothing but PHP and its curl extension.
//
//   PNS4ONES_URL=http://localhost:36696 PNS4ONES_SERVER_KEY=... \
//   php send.php IB_ID USER_ID "New order" "No. 1234 from the web shop" order=1234
//
// In a web shop, require this file and call pns_send() from the order handler.
// HTTPS: curl checks the service's certificate against the system's CAs; for a
// private CA set CURL_CA_BUNDLE or add CURLOPT_CAINFO below.

declare(strict_types=1);

final class PnsError extends RuntimeException {}

/** One request to the send API: [HTTP status, decoded JSON answer]. */
function pns_request(string $url, ?array $json = null, ?string $token = null): array
{
    $ch = curl_init($url);
    $headers = [];
    if ($json !== null) {  // POST /sendmessage
        curl_setopt($ch, CURLOPT_POSTFIELDS, json_encode($json, JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR));
        $headers[] = 'Content-Type: application/json; charset=utf-8';
    }
    if ($token !== null) {
        $headers[] = 'Authorization: Bearer ' . $token;
    }
    curl_setopt_array($ch, [CURLOPT_HTTPHEADER => $headers, CURLOPT_RETURNTRANSFER => true, CURLOPT_TIMEOUT => 10]);
    $body = curl_exec($ch);
    if ($body === false) {
        throw new PnsError('pns4ones unreachable: ' . curl_error($ch));
    }
    $status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
    curl_close($ch);
    return [$status, json_decode($body, true)];
}

/** The access token: one /auth per hour, kept for this PHP process (use APCu or a file across requests). */
function pns_token(string $base, string $serverKey, bool $fresh = false): string
{
    static $cached = null;  // [token, expires_in: unix time; with expires_in_format = legacy the 403 below renews it]
    if (!$fresh && $cached !== null && $cached[1] - 60 > time()) {
        return $cached[0];
    }
    [$status, $doc] = pns_request($base . '/auth?server_key=' . rawurlencode($serverKey));
    if ($status !== 200) {
        throw new PnsError("pns4ones /auth: $status " . ($doc['reason'] ?? ''));
    }
    $cached = [$doc['access_token'], $doc['expires_in']];
    return $cached[0];
}

/** The request body for one user: the same members as the 1C module Pns4OnesSender.bsl builds. */
function pns_user_message(string $ibId, string $userId, string $title, string $text, array $data = []): array
{
    $message = ['Notification' => ['Title' => $title, 'Body' => $text, 'Important' => false]];
    if ($data) {
        $message['Data'] = $data;  // string values only
    }
    return ['Recipient' => ['Type' => 'user', 'IbId' => $ibId, 'UserId' => $userId], 'Message' => $message];
}

/** Send; returns ['sessions' => N, 'users' => M] (0 sessions: the user is not online). */
function pns_send(string $base, string $serverKey, array $request): array
{
    [$status, $doc] = pns_request($base . '/sendmessage', $request, pns_token($base, $serverKey));
    if ($status === 401 || $status === 403) {  // token revoked or expired: once more with a fresh one
        [$status, $doc] = pns_request($base . '/sendmessage', $request, pns_token($base, $serverKey, true));
    }
    if ($status !== 200) {  // 400 names the wrong field, 413: too big, 429: too many
        $field = isset($doc['field']) ? " ({$doc['field']})" : '';
        throw new PnsError("pns4ones: $status " . ($doc['reason'] ?? '') . $field);
    }
    return $doc;
}

// Command line: php send.php IB_ID USER_ID TITLE [BODY] [KEY=VALUE ...]
if (PHP_SAPI === 'cli' && realpath($argv[0] ?? '') === __FILE__) {
    if ($argc < 4) {
        fwrite(STDERR, "usage: php send.php IB_ID USER_ID TITLE [BODY] [KEY=VALUE ...]\n");
        exit(2);
    }
    $data = [];
    foreach (array_slice($argv, 5) as $pair) {
        [$key, $value] = explode('=', $pair, 2) + [1 => ''];
        $data[$key] = $value;
    }
    try {
        $base = rtrim(getenv('PNS4ONES_URL') ?: 'http://localhost:36696', '/');
        $result = pns_send($base, (string) getenv('PNS4ONES_SERVER_KEY'), pns_user_message($argv[1], $argv[2], $argv[3], $argv[4] ?? '', $data));
        echo json_encode($result), "\n";
    } catch (PnsError $e) {
        fwrite(STDERR, $e->getMessage() . "\n");
        exit(1);
    }
}
