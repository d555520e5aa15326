curl -X POST "https://api.gptimageapi.dev/v1/images/edit" \
  -H "Authorization: Bearer YOUR_API_KEY" \
  -H "Content-Type: application/json" \
  -d '{
    "prompt": "把这张产品图改成更高级的棚拍效果,弱化反光,背景换成浅灰无缝纸背景。",
    "image": "https://example.com/image.jpg",
    "model": "gpt-image-2",
    "size": "4:3",
    "quality": "high",
    "n": 1
  }'
