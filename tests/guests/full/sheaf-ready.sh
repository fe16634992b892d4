#!/bin/sh
# Reports the guest's state on the serial console (see sheaf-ready.service).
ip4=$(ip -4 -o addr show scope global 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
echo "SHEAF-GUEST ready hostname=$(hostname) ip=${ip4:-none} kernel=$(uname -r)"
