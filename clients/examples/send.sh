#!/bin/sh
# Send a push notification to a 1C user through pns4ones with curl and jq.
#
#   PNS4ONES_URL=http://localhost:36696 PNS4ONES_SERVER_KEY=... \
#   sh send.sh IB_ID USER_ID "Call from +7 495 123-45-67" "Customer: LLC Romashka"
#
# Prints {"sessions": N, "users": M}; on a refusal prints the service's JSON
# error ({"error", "reason", "field"}) and exits non-zero. HTTPS with a private
# CA: export CURL_CA_BUNDLE=/path/to/ca.pem.
set -eu
URL="${PNS4ONES_URL:-http://localhost:36696}"
KEY="${PNS4ONES_SERVER_KEY:?set PNS4ONES_SERVER_KEY to the application's server key}"
if [ $# -lt 3 ]; then
    echo "usage: $0 IB_ID USER_ID TITLE [BODY]" >&2
    exit 2
fi

# 1. An access token (valid an hour; the service hands out the same one while it is fresh).
AUTH=$(curl -sS --fail-with-body -G "$URL/auth" --data-urlencode "server_key=$KEY") || { echo "pns4ones /auth: $AUTH" >&2; exit 1; }
TOKEN=$(printf '%s' "$AUTH" | jq -er .access_token)

# 2. The message, built by jq so that quotes and Cyrillic in the arguments are safe.
BODY=$(jq -cn --arg ib "$1" --arg user "$2" --arg title "$3" --arg text "${4:-}" \
    '{Recipient: {Type: "user", IbId: $ib, UserId: $user},
      Message: {Notification: {Title: $title, Body: $text, Important: false}}}')

# 3. Send it.
curl -sS --fail-with-body -X POST "$URL/sendmessage" \
    -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json; charset=utf-8" \
    --data-binary "$BODY"
echo
