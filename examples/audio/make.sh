#!/usr/bin/env bash
# Regenerates the example audio in this folder (espeak-ng speech, converted with sox/ffmpeg).
# Several formats, sample rates and channel counts on purpose: the pipeline resamples all to 16 kHz mono.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
say() { espeak-ng -v en-us -s 155 -w "$tmp/$1.wav" "$2"; }

say meeting "Good morning everyone. Let us start the weekly planning meeting. First item is the release schedule. \
The build for the audio pipeline is green, and the team wants to ship on Thursday. Second item is the budget for \
the new cluster. We agreed to rent four more machines with accelerators for the nightly batch. Any questions? \
No? Then let us move on to the customer feedback from last week."
say podcast "Welcome back to the show. Today we talk about how large audio language models listen. \
A model turns one minute of speech into fifteen hundred audio tokens, and most of them carry little meaning. \
Pruning the quiet and repetitive tokens keeps the answer the same and makes the model much faster. \
Our guest explains how attention heads divide the work between meaning and sound. \
Some heads follow the words, others follow pitch, rhythm and noise."
say lecture "In this lecture we review sampling. A signal sampled at sixteen kilohertz keeps frequencies up to \
eight kilohertz, which is enough for speech. Music needs more, so studios record at forty four point one or \
forty eight kilohertz. Before a speech model can listen, the audio is resampled and mixed down to one channel."
say news "In the news today, the city opened a new library with a large collection of recorded talks. \
Visitors can listen to lectures and interviews from the last fifty years."
say weather "Tomorrow will be cloudy in the morning with light rain in the afternoon. Temperatures reach fourteen degrees."

# wav: 16 kHz mono 16-bit; flac: 24 kHz stereo; ogg: 22.05 kHz mono vorbis; mp3: 44.1 kHz stereo; m4a: AAC 24 kHz.
sox "$tmp/meeting.wav" -r 16000 -c 1 -b 16 meeting.wav
sox "$tmp/podcast.wav" -r 24000 -c 2 podcast.flac
ffmpeg -nostdin -loglevel error -y -i "$tmp/lecture.wav" -c:a libvorbis -q:a 1 lecture.ogg
ffmpeg -nostdin -loglevel error -y -i "$tmp/news.wav" -ar 44100 -ac 2 -c:a libmp3lame -b:a 48k news.mp3
ffmpeg -nostdin -loglevel error -y -i "$tmp/weather.wav" -ar 24000 -c:a aac -b:a 32k weather.m4a
ls -l
