"""Media files: sample videos and the static HTML gallery, below training and sampling so that
both (and evaluation) write them.

  gallery   write_video, write_gif, write_mp4 (uint8 videos), figure_table, write_gallery
  writer    to_uint8, write_videos: a directory of sample videos (GIF + MP4) with prompts.txt
"""
